"""The method table: every baseline and ablation is one row of flags over one learner.

Nothing here is code that differs per method; ``networks.py`` and ``losses.py`` read these
flags. Adding a method means adding a row, not copying a trainer (the lesson of JaxMARL's
86%-identical ``qmix_rnn.py`` / ``vdn_rnn.py`` files).

``messages`` says what the Q head of agent i sees besides its own hidden state h_i:
- ``none``: nothing (independent agents, QMIX without communication);
- ``concat``: every teammate's message, concatenated in agent order (Full-Comm);
- ``ablated``: k of the N-1 teammates' messages, the rest zeroed, plus the keep mask (AME);
- ``poe``: the product-of-experts latent of every received message, own included (CroMAC).
"""

from __future__ import annotations

from dataclasses import dataclass

from cromac_jax.config import METHODS, ConfigError


@dataclass(frozen=True)
class Method:
    name: str
    messages: str  # none | concat | ablated | poe
    state_vae: bool  # train the state VAE; act and learn with its latent in training
    robust: bool  # IBP overlap loss after T_r and the message-encoder weight clamp
    #: Attacks change this method's decisions only if it reads messages.
    description: str = ""

    @property
    def reads_messages(self) -> bool:
        return self.messages != "none"


METHOD_TABLE: dict[str, Method] = {
    "qmix": Method("qmix", "none", False, False, "QMIX, no messages"),
    "full_comm": Method("full_comm", "concat", False, False, "all teammates' messages, never perturbed in training"),
    "cromac": Method("cromac", "poe", True, True, "PoE fusion + state VAE distillation + IBP robust loss"),
    "cromac_no_robust": Method("cromac_no_robust", "poe", True, False, "CroMAC without robust loss and weight clamp"),
    "ame": Method("ame", "ablated", False, False, "ablated message ensemble (Sun et al., ICLR 2023)"),
}
assert tuple(METHOD_TABLE) == METHODS


def get_method(name: str) -> Method:
    if name not in METHOD_TABLE:
        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(METHOD_TABLE)}")
    return METHOD_TABLE[name]

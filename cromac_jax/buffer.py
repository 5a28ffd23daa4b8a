"""The episode replay buffer: flashbax's item buffer holding whole padded episodes.

Each item is one ``EpisodeBatch`` episode of T1 = episode_limit + 1 slots with its ``filled``
mask (ENV_SPEC.md 5.2). The buffer is a ring of ``buffer_size`` episodes (5000 in the paper);
batches are drawn uniformly. flashbax draws with replacement where pymarl draws without;
with thousands of stored episodes and batches of 32 the two are practically the same.
"""

from __future__ import annotations

from typing import Any

import flashbax as fbx
import jax


def make_episode_buffer(buffer_size: int, batch_size: int, learning_starts: int) -> Any:
    """An item buffer of episodes, added in batches of parallel envs, sampled in batches."""
    return fbx.make_item_buffer(
        max_length=buffer_size,
        min_length=max(1, min(learning_starts, buffer_size)),
        sample_batch_size=batch_size,
        add_batches=True,
    )


def stored_episodes(buffer_state: Any, buffer_size: int) -> jax.Array:
    """How many episodes the buffer holds (saturates at ``buffer_size``)."""
    return jax.numpy.where(buffer_state.is_full, buffer_size, buffer_state.current_index)

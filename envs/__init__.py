"""Pure-functional JAX environments for CroMAC, in JaxMARL's ``MultiAgentEnv`` API."""

from envs.base import CromacEnv, Timestep
from envs.registry import EnvConfigError, get_preset, make, preset_names, register

__all__ = ["CromacEnv", "Timestep", "EnvConfigError", "get_preset", "make", "preset_names", "register"]

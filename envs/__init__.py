"""Pure-functional JAX environments for CroMAC, in JaxMARL's ``MultiAgentEnv`` API."""

from envs.base import CromacEnv, Timestep
from envs.registry import (
    EnvConfigError,
    check_name,
    get_preset,
    make,
    preset_names,
    register,
)

__all__ = ["CromacEnv", "EnvConfigError", "Timestep", "check_name", "get_preset", "make", "preset_names", "register"]

"""Memory cores, the recurrent actor-critic, and the API to run and export a trained policy."""

from policies.action_mask import ActionMaskError
from policies.deploy import PolicyLoadError, PolicyState, RecurrentPolicy, load_policy

__all__ = ["ActionMaskError", "PolicyLoadError", "PolicyState", "RecurrentPolicy", "load_policy"]

"""commit-env: token commitment for frozen masked diffusion language models.

Importing the package is cheap (no transformers import) and registers the Gymnasium environments.
"""

from __future__ import annotations

from commit_env.envs import register_envs

__version__ = "0.1.0"

__all__ = ["__version__", "register_envs"]

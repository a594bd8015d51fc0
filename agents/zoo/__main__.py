"""``python -m commit_env.agents.zoo [ppo|ppo_mask]``: print the path of a shipped config."""

import sys

from commit_env.agents.zoo import conf_path

print(conf_path(sys.argv[1] if len(sys.argv) > 1 else "ppo"))

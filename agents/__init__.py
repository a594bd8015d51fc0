"""Reinforcement-learning agents (SB3 PPO / MaskablePPO) on the token-commitment environment."""

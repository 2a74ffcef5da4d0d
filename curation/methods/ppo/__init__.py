"""RAISE's PPO machinery (METHODS.md §4): selection inside the fine-tuning loop, learned with PPO.

`state` computes what the selector sees of each example, `policy` holds the actor, critic,
Plackett-Luce top-b and PPO/GAE maths, `env` is the short LoRA fine-tune whose validation
loss is the reward, `schedule` stores the trained selector's training schedule. The method
itself (episodes, resume, scores, explanation) is `curation.methods.raise_`.
"""

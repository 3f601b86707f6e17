"""Prompts: finding the trigger words in token lists, putting S1*, S2* in their place, building
the class-word and two-person variants, and blending CONDITIONING."""

"""Weight files: reading them safely (weights_only pickles, safetensors), telling one kind from
another, converting, and finding them in a ComfyUI-style models folder."""

"""Talking to a ComfyUI server: the HTTP/websocket client, a headless server launcher, the
UI -> API workflow conversion and the batch runner. Not part of the node pack."""

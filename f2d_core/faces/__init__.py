"""Photos and faces without torch: image reading, ONNX sessions, detection, alignment to the
ArcFace template, recognition and identity similarity."""

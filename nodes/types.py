"""The pack's socket types."""
from comfy_api.v0_0_2 import io

F2DEncoder = io.Custom("F2D_ENCODER")      # nodes.handle.EncoderHandle
F2DFace = io.Custom("F2D_FACE")            # f2d_core.identity.face_file.FaceIdentity
F2DExpression = io.Custom("F2D_EXPRESSION")  # nodes.expression.Expression

"""The input/output contract every artifact keeps (Open Model Zoo ``retinaface-resnet50-pytorch``)."""

INPUT_NAME = "data"
OUTPUT_NAMES = ("face_rpn_bbox_pred", "face_rpn_cls_prob", "face_rpn_landmark_pred")
# Last dimension of each output, in OUTPUT_NAMES order.
OUTPUT_WIDTHS = (4, 2, 10)
# Per-channel mean subtracted from BGR pixels before the network (biubug6 detect.py).
MEAN_BGR = (104.0, 117.0, 123.0)

"""Make models physically smaller and faster: structured pruning, ALBERT conversion, int8, ONNX."""

"""What runs a trained surrogate: its model directory, the engines that run its network, the predictor.

Holds `modeldir` (the one reader and writer of a model directory), `engines` (torch, ONNX Runtime,
TVM behind one signature) and `inference` (`Predictor`: text in, cycles out). May import `blocks`,
`models`, `programs` and the shared top modules; never the registry, builds or the service, so a
prediction starts without MLflow or TVM.
"""

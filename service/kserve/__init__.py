"""The KServe v2 / Open Inference Protocol (Triton-compatible), next to `/detect`.

`tensors`: the protocol's datatypes and the HTTP infer body (JSON tensors and the binary tensor data
extension), numpy only.
"""

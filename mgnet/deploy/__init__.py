"""Deployment: a trained run as one self-contained model file, and scoring without training code.

    module.py    ClipScorer, the exportable nn.Module: (rgb, pose, scene) -> the fused score, the
                 three training-normalised components and the raw scores, per clip
    decompose.py the ``mgnet::`` custom ops replaced by their eager references (mgnet.ops.*_reference)
    export.py    run_export, what ``mgnet export --run R --format onnx|torch --out D [--verify]``
                 (mgnet/jobs/export.py) does
    runtime.py   the exported folder loaded for ``mgnet score --engine onnx`` (onnxruntime; imports
                 neither mgnet.models nor any training code)
"""

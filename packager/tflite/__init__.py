"""Steps as TFLite files (docs/tflite.md): convert an ONNX step with onnx2tf, in a virtual
environment of its own, and check the result against the original.

    env.py      the converter's environment, made once per machine under ~/.cache/edgepart
    convert.py  convert_step(): onnx2tf as a subprocess, and the layout perms at the step's edge
    check.py    check_step(): the ONNX step on onnxruntime against the TFLite step on LiteRT, and
                what either runtime raises, as a ConversionError naming the step
"""

from edgepart.packager.tflite.check import check_step, runtime_errors, runtime_failure
from edgepart.packager.tflite.convert import PRECISIONS, convert_step
from edgepart.packager.tflite.env import converter_env

__all__ = ["PRECISIONS", "check_step", "convert_step", "converter_env", "runtime_errors", "runtime_failure"]

"""Run inside the converter's environment (env.py), never imported by edgepart: onnx2tf builds the
Keras model, TensorFlow's TFLite converter writes the one file asked for (docs/tflite.md,
"Conversion").

onnx2tf's command line would also write a SavedModel (half of its time on EfficientNet-Lite0, and
needed only by its own int8 path) and allows TensorFlow's Flex ops, which LiteRT does not run: here
only TFLite's builtin operators are allowed, so such a step fails at conversion, not on the device.

    python _driver.py job.json      job: {"onnx", "out", "precision", "use_onnxsim", "calibration": {key: npy of samples, one a row},
                                          "test_data": {key: npy of one input}}
"""

import json
import sys


def main() -> None:
    job = json.load(open(sys.argv[1]))
    import numpy as np
    import onnx2tf
    import tensorflow as tf

    model = onnx2tf.convert(
        input_onnx_file_path=job["onnx"],
        output_folder_path=job["work"],
        not_use_onnxsim=not job["use_onnxsim"],
        disable_model_save=True,  # the Keras model only: the TFLite file is written below
        verbosity="debug",  # each operator as it converts: the log names the one a failure stops at
        # TFLite has no builtin Erf (GELU's in exported transformers): onnx2tf's polynomial in its
        # place (Abramowitz and Stegun 7.1.26, absolute error under 1.5e-7), checked like any step
        replace_to_pseudo_operators=["erf"],
        # random inputs (in onnx2tf's layout) on which it checks the transpositions it chooses, instead
        # of all ones, on which a padding mask hides a wrong one (convert.py, _test_data)
        custom_input_op_name_np_data_path=[[k, v] for k, v in job.get("test_data", {}).items()] or None,
    )
    if model is None:
        sys.exit("onnx2tf returned no model")
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    precision = job["precision"]
    if precision == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        # each file: one sample of its input per row (a tensor without a batch axis: one row, the
        # same in every sample)
        data = {k: np.load(v) for k, v in job["calibration"].items()}
        n = max(len(v) for v in data.values())

        def samples():
            for i in range(n):
                yield {k: v[i % len(v)].astype(np.float32) for k, v in data.items()}

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = samples
        # integer weights and activations where TFLite has int8 kernels, float where not; float
        # inputs and outputs either way, so the wire keeps its float tensors
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    with open(job["out"], "wb") as f:
        f.write(converter.convert())
    print("edgepart: TFLite file written", flush=True)


if __name__ == "__main__":
    main()

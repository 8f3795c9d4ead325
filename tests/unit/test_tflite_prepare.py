"""The converter's pure parts (docs/tflite.md), without the converter's environment: the step as
prepared for onnx2tf, the layouts a shape allows, and the operator read from a converter log. The
conversions themselves are in tests/models/test_tflite.py (a module of another name: pytest
collects the suite as one namespace)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgepart.packager.tflite.convert import _layouts, _prepare, failed_operator
from edgepart.runtime import make_session


def test_prepare_renames_the_edges_in_onnx_order_and_keeps_what_the_step_computes():
    # the input is called "y0" and a tensor inside "x0" (the names the edges get); one output is an
    # input passed straight through, one is the inner tensor, and the batch is symbolic
    nodes = [helper.make_node("Relu", ["y0"], ["x0"]), helper.make_node("Neg", ["x0"], ["out"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("y0", TensorProto.FLOAT, ["n", 3]),
                                       helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 3]),
                           helper.make_tensor_value_info("b", TensorProto.FLOAT, [2]),
                           helper.make_tensor_value_info("x0", TensorProto.FLOAT, ["n", 3])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    p = _prepare(m, {"y0": (1, 3), "b": (2,)})
    onnx.checker.check_model(p, full_check=True)
    assert [i.name for i in p.graph.input] == ["x0", "x1"] and [o.name for o in p.graph.output] == ["y0", "y1", "y2"]
    assert [d.dim_value for d in p.graph.input[0].type.tensor_type.shape.dim] == [1, 3]
    x, b = np.array([[1, -2, 3]], np.float32), np.array([5, 6], np.float32)
    want = make_session(m.SerializeToString()).run(None, {"y0": x, "b": b})
    got = make_session(p.SerializeToString()).run(None, {"x0": x, "x1": b})
    assert all(np.array_equal(w, g) for w, g in zip(want, got))
    assert m.graph.input[0].name == "y0"  # the step itself is untouched


@pytest.mark.parametrize("onnx_shape, tflite_shape, layouts", [
    ((1, 80, 14, 14), (1, 14, 14, 80), [(0, 2, 3, 1)]),
    ((1, 8, 8, 8), (1, 8, 8, 8), [(0, 2, 3, 1), ()]),  # both: the numbers decide
    ((1, 1000), (1, 1000), [()]),
    ((1, 3, 10), (1, 10, 3), [(0, 2, 1)]),
    ((), (), [()]),
    ((1, 80, 14, 14), (1, 80, 196), []),
])
def test_the_layouts_a_shape_allows(onnx_shape, tflite_shape, layouts):
    assert _layouts(onnx_shape, tflite_shape) == layouts


def test_the_operator_is_read_from_the_log():
    esc = "\x1b[32m"  # onnx2tf colours its log
    not_implemented = f"{esc}INFO:\x1b[0m something\n\x1b[31mERROR:\x1b[0m CastLike OP is not yet implemented.\n"
    assert failed_operator(not_implemented) == ("CastLike", "")
    per_op = (f"{esc}INFO:\x1b[0m \x1b[35monnx_op_type\x1b[0m: Conv\x1b[35m onnx_op_name\x1b[0m: /b/Conv\n"
              f"{esc}INFO:\x1b[0m \x1b[35monnx_op_type\x1b[0m: Concat\x1b[35m onnx_op_name\x1b[0m: wa/Concat\n"
              "Traceback (most recent call last):\nIndexError: list index out of range\n"
              "\x1b[31mERROR:\x1b[0m onnx_op_name: wa/Concat\n")
    assert failed_operator(per_op) == ("Concat", "wa/Concat")
    node = helper.make_node("Concat", ["a", "b"], ["c"], name="/Concat", axis=0)
    step = helper.make_model(helper.make_graph([node], "g", [], []))
    assert failed_operator(per_op, step) == ("Concat", "/Concat")  # "wa/" is onnx2tf's spelling of "/"
    assert failed_operator("ValueError: the TFLite converter failed\n") == ("", "")
    # TensorFlow's converter refusing an operator TFLite has no builtin for (before Erf was replaced)
    no_builtin = ('loc(callsite(callsite(fused["Erf:", callsite("model/tf.math.erf/Erf"))): error: '
                  "'tf.Erf' op is neither a custom op nor a flex op\nerror: failed while converting: 'main':\n")
    assert failed_operator(no_builtin) == ("Erf", "")


def test_a_failure_message_leaves_out_the_converters_mlir_dump(tmp_path):
    from edgepart.packager.tflite.convert import _failure

    work = tmp_path / "work"
    work.mkdir()
    log = work / "s.onnx2tf.log"
    log.write_text("INFO: converting\nloc(fused[...]): error: 'tf.Erf' op is neither a custom op nor a flex op\n"
                   "error: failed while converting: 'main':\n\"func.func\"() <{arg_attrs = [{x}]}> ({\n"
                   "  %0 = \"tfl.mul\"(%1, %2)\n%3 = x\n}) : () -> ()\n<unknown>:0: note: see current operation\n")
    e = _failure("stage1", log, "onnx2tf failed")
    assert "at the ONNX operator Erf" in str(e) and e.operator == "Erf"
    assert "func.func" not in str(e) and "tfl.mul" not in str(e) and "failed while converting" in str(e)

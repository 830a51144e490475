"""Reading a PyTorch checkpoint (`.pth`, `.pt`, `.ckpt`: what ESRGAN-family upscalers are shared as) without
PyTorch, which the studio does not depend on, and without running the file's code.

torch.save writes a pickle whose tensors point into raw storages: since torch 1.6 a zip of `data.pkl` and one
`data/<key>` file per storage, before that one stream of pickles followed by the storages. The unpickler here
resolves only the handful of globals a tensor state dict needs (torch's tensor rebuilders, its storage types,
OrderedDict) and refuses every other one, as `torch.load(weights_only=True)` does: a checkpoint that asks for
anything else is not a plain state dict, and loading it would run arbitrary code.
"""

import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from mflux_core.errors import ModelLoadError

STORAGE_DTYPES = {  # torch's storage type names -> numpy dtypes; bfloat16 is read as its 16 bits, widened below
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16, "BFloat16Storage": np.uint16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _StorageType:
    def __init__(self, name: str):
        self.name, self.dtype = name, np.dtype(STORAGE_DTYPES[name])


class _Tensor:
    """A tensor as the pickle describes it, read from its storage once the storages are known."""

    def __init__(self, storage: tuple, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def array(self, storage_bytes) -> np.ndarray:
        kind, key = self.storage
        flat = np.frombuffer(storage_bytes(key), dtype=kind.dtype)
        itemsize = kind.dtype.itemsize
        # as_strided reads wherever it is told: a damaged or crafted file must not make it read past the storage
        last = self.offset + sum((side - 1) * step for side, step in zip(self.size, self.stride))
        if self.offset < 0 or min(self.stride, default=0) < 0 or (0 not in self.size and last >= len(flat)):
            raise ValueError("a tensor reaches past its storage")
        strided = np.lib.stride_tricks.as_strided(flat[self.offset:], self.size,
                                                  tuple(step * itemsize for step in self.stride))
        values = np.array(strided)  # a copy: the checkpoint's buffer is not kept
        if kind.name == "BFloat16Storage":
            values = (values.astype(np.uint32) << 16).view(np.float32)
        return values


def _rebuild_tensor(storage, storage_offset, size, stride, *_unused):
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *_unused):
    return data


ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _StateDictUnpickler(pickle.Unpickler):
    def __init__(self, file):
        super().__init__(file)
        self.storage_types: dict[str, _StorageType] = {}  # by storage key: the legacy format's storages need them

    def find_class(self, module: str, name: str):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which a plain state dict does not") from None

    def persistent_load(self, pid):
        # ('storage', storage type, key, location, numel[, view metadata])
        if not (isinstance(pid, tuple) and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError("it holds a storage of a kind this reader does not know")
        self.storage_types[str(pid[2])] = pid[1]
        return pid[1], str(pid[2])


def read_torch_state_dict(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a torch checkpoint, by name (nested dicts flattened with "."); ModelLoadError naming the
    file when it is not a readable tensor checkpoint."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            tree, storage_bytes = _read_zip(path)
        else:
            tree, storage_bytes = _read_legacy(path)
        return {name: tensor.array(storage_bytes) for name, tensor in _flattened(tree).items()}
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, TypeError, AttributeError, IndexError,
            struct.error, zipfile.BadZipFile, OSError) as error:
        raise ModelLoadError(f"{path.name} is not a readable PyTorch checkpoint of tensors ({error}).") from None


def _read_zip(path: Path):
    archive = zipfile.ZipFile(path)
    pickles = [name for name in archive.namelist() if name.endswith("/data.pkl") or name == "data.pkl"]
    if not pickles:
        raise ValueError("no data.pkl in the archive")
    prefix = pickles[0][: -len("data.pkl")]
    if prefix + "byteorder" in archive.namelist() and archive.read(prefix + "byteorder") != b"little":
        raise ValueError("a big-endian checkpoint")
    tree = _StateDictUnpickler(archive.open(pickles[0])).load()
    return tree, lambda key: archive.read(f"{prefix}data/{key}")


def _read_legacy(path: Path):
    """torch's format before 1.6: magic, protocol, system info, the tree, the storage keys, then each storage as
    its element count (int64) and its bytes, in the keys' order."""
    with open(path, "rb") as file:
        if _StateDictUnpickler(file).load() != LEGACY_MAGIC:
            raise ValueError("neither a zip archive nor a legacy torch file")
        _StateDictUnpickler(file).load()  # protocol version
        _StateDictUnpickler(file).load()  # system info
        unpickler = _StateDictUnpickler(file)
        tree = unpickler.load()
        storages = {}
        for key in _StateDictUnpickler(file).load():
            count, = struct.unpack("<q", file.read(8))
            storages[str(key)] = file.read(count * unpickler.storage_types[str(key)].dtype.itemsize)
    return tree, storages.__getitem__


def _flattened(tree, prefix: str = "") -> dict[str, _Tensor]:
    if isinstance(tree, _Tensor):
        return {prefix.rstrip("."): tree}
    if isinstance(tree, dict):
        found = {}
        for key, value in tree.items():
            found.update(_flattened(value, f"{prefix}{key}."))
        return found
    return {}  # numbers, strings, lists in a checkpoint (an epoch, training options) are not weights

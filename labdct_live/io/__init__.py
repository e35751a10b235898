"""Input and output at the bottom of the stack: frame folders and frame checks, atomic
TIFF and folder output, safe names for keys and paths, and the document codec of files and
sockets. Imports nothing else of the package.
"""

from labdct_live._lazy import attach

_SUBMODULES = {
    "errors": ["CommandRun", "command_context", "describe_os_error"],
    "frames": [
        "TIFF_SUFFIXES", "FrameReadError", "EmptyFolderError", "FrameStack", "open_frame_folder",
        "read_frame", "check_frame", "natural_key",
    ],
    "names": ["KEY_PATTERN", "is_safe_key", "check_key", "safe_key"],
    "output": [
        "atomic_file",
        "AtomicOutputDir", "OUTPUT_MARKER", "OutputFolderError", "check_output_dir",
        "check_no_overlap", "write_output_marker", "make_parent_folder", "work_folder",
        "probe_writable", "require_free_space", "require_hdf5",
    ],
    "tiff": ["write_tiff_atomic", "write_mask_tiff", "tiff_layout_tags"],
    "wire": [
        "ARRAY_EXT", "MAX_NDIM", "SCALAR_EXT", "WireDecodeError", "pack", "unpack",
        "append_document", "read_documents",
    ],
}

__getattr__, __dir__, __all__ = attach(__name__, _SUBMODULES)

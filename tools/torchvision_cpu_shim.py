"""Make the PyPI torchvision wheel importable next to a CPU-only torch.

Why this file exists
--------------------
On the CPU machines the project uses the local ``torch==2.13.0+cpu`` wheel. The only
torchvision 0.28.0 wheel on PyPI is built against CUDA torch, so its compiled extension
(``torchvision/_C.so``) fails to load under a CPU torch. torchvision swallows that
failure, but its ``_meta_registrations`` module then registers fake kernels for
``torchvision::nms`` & co. and crashes with::

    RuntimeError: operator torchvision::nms does not exist

diffdass never calls these detection operators (it uses torchvision's backbones and
transforms only), so it is enough to *declare* their schemas before torchvision is
imported. Calling one of them still fails loudly ("no kernel registered"), which is the
honest outcome.

How it is wired
---------------
``tools/setup_env.sh`` copies this file into the virtual environment's site-packages as
``_diffdass_torchvision_cpu_shim.py`` and adds a one-line ``.pth`` file that imports it at
interpreter start-up. Importing it only registers a lazy import hook: the schemas are
declared the first time something imports ``torchvision`` (so ``pip`` and other tools do
not pay for importing torch). It is therefore part of the *environment*, not of the library: the
``diffdass`` package itself contains no workaround, and on a machine with a matching
torch/torchvision pair (the GPU box) the set-up does not install the shim at all.
"""

from __future__ import annotations


def _install() -> None:
    try:
        import torch
    except Exception:  # torch missing: nothing to patch
        return
    if torch.version.cuda is not None:
        return  # CUDA torch: the real extension loads, never shadow it
    schemas = {
        "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
        "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
        "roi_align": (
            "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
            "SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor"
        ),
        "qroi_align": (
            "qroi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
            "SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor"
        ),
        "_roi_align_backward": (
            "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, "
            "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, "
            "SymInt height, SymInt width, int sampling_ratio, bool aligned) -> Tensor"
        ),
        "ps_roi_align": (
            "ps_roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
            "SymInt pooled_width, int sampling_ratio) -> (Tensor, Tensor)"
        ),
        "_ps_roi_align_backward": (
            "_ps_roi_align_backward(Tensor grad, Tensor rois, Tensor channel_mapping, "
            "float spatial_scale, SymInt pooled_height, SymInt pooled_width, int sampling_ratio, "
            "SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor"
        ),
        "roi_pool": (
            "roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
            "SymInt pooled_width) -> (Tensor, Tensor)"
        ),
        "_roi_pool_backward": (
            "_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, "
            "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, "
            "SymInt height, SymInt width) -> Tensor"
        ),
        "ps_roi_pool": (
            "ps_roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
            "SymInt pooled_width) -> (Tensor, Tensor)"
        ),
        "_ps_roi_pool_backward": (
            "_ps_roi_pool_backward(Tensor grad, Tensor rois, Tensor channel_mapping, "
            "float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
            "SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor"
        ),
        "deform_conv2d": (
            "deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, "
            "SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, "
            "SymInt dilation_w, SymInt groups, SymInt offset_groups, bool use_mask) -> Tensor"
        ),
        "_deform_conv2d_backward": (
            "_deform_conv2d_backward(Tensor grad, Tensor input, Tensor weight, Tensor offset, "
            "Tensor mask, Tensor bias, SymInt stride_h, SymInt stride_w, SymInt pad_h, "
            "SymInt pad_w, SymInt dilation_h, SymInt dilation_w, SymInt groups, "
            "SymInt offset_groups, bool use_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)"
        ),
    }
    missing = [n for n in schemas if not torch._C._dispatch_has_kernel(f"torchvision::{n}")]
    missing = [n for n in missing if not _op_exists(torch, n)]
    if not missing:
        return
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for name in missing:
        lib.define(schemas[name])
    # keep the Library object alive for the interpreter's lifetime
    globals()["_LIB"] = lib


def _op_exists(torch, name: str) -> bool:
    try:
        getattr(torch.ops.torchvision, name)
        return True
    except (AttributeError, RuntimeError):
        return False


class _TorchvisionHook:
    """sys.meta_path entry that runs ``_install`` right before torchvision is imported."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision":
            return None
        import sys

        sys.meta_path[:] = [f for f in sys.meta_path if f is not self]
        try:
            _install()
        except Exception as exc:  # never break the import itself
            print(f"[diffdass torchvision shim] not installed: {exc}", file=sys.stderr)
        return None  # let the normal finders import torchvision


def _register() -> None:
    import sys

    if not any(isinstance(f, _TorchvisionHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionHook())


_register()

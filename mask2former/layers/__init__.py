from .ms_deform_attn import ms_deform_attn, ms_deform_attn_reference
from .shape_spec import ShapeSpec

__all__ = ["ShapeSpec", "ms_deform_attn", "ms_deform_attn_reference"]

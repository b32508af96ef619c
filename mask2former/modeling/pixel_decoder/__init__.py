from .msdeformattn import MSDeformAttn, MSDeformAttnPixelDecoder, build_msdeformattn_pixel_decoder

__all__ = ["MSDeformAttn", "MSDeformAttnPixelDecoder", "build_msdeformattn_pixel_decoder"]

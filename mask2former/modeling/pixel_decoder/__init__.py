from .msdeformattn import MSDeformAttnPixelDecoder, build_msdeformattn_pixel_decoder

__all__ = ["MSDeformAttnPixelDecoder", "build_msdeformattn_pixel_decoder"]

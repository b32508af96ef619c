from .masked_attention_decoder import MultiScaleMaskedTransformerDecoder, build_masked_transformer_decoder

__all__ = ["MultiScaleMaskedTransformerDecoder", "build_masked_transformer_decoder"]

"""Utilities, one topic per module: distributed helpers (`dist`), logging (`logger`), training
events and metric writers (`events`)."""

"""The GPU cost model: operators counted in FLOPs and bytes, priced on a roofline with calibrated rates."""

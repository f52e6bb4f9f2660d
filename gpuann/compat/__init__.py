"""Drop-in shims for other libraries' APIs (``import gpuann.compat.faiss as faiss``)."""

__all__: list[str] = []

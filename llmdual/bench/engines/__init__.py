"""The benchmark's engines: the one table of them (``table``) and the runtimes a worker opens (``torch``, ``keras``,
``onnx``, ``reference``, ``generic``), each importing its framework only when a worker opens it."""

"""Pretrained weights: generic readers, store, strict merge and downloads; one module per
architecture for its name tables and converters.

- readers.py: Keras (legacy HDF5, Keras 3) and torch files -> numpy, by the source's names.
- store.py: ported params on disk (flax msgpack + JSON sidecar), digests, atomic writes.
- merge.py: the strict merge of loaded weights into initialised params.
- download.py: official files, downloaded, checked against their digests, ported, cached.
- vgg16.py: VGG16's name tables, converters, official files and port.
- mobilenet.py: MobileNet v1's (Keras) name tables, converter, official files and port.

A new architecture adds its module here (name tables, pure converters, OFFICIAL, port_file)
and its model family's `check_pretrained` / `load` in mammo_jax/models/. Importing the package
imports none of its modules: h5py comes with readers.py, torch only when a .pth is read.
"""

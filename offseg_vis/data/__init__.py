"""Data: real dataset readers, the FashionScenes offline benchmark and the training transforms.

Modules: ``datasets`` (ADE20K, Cityscapes, COCO-Stuff-164K, Pascal-Context-59, generic folders,
``build_dataset``, ``check_dataset``), ``fashion_scenes`` (the embedded benchmark), ``transforms``
(the OffSeg recipe), ``commands`` (the ``offseg data`` command).
"""

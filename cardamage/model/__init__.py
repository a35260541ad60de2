"""Model: the KerasCV segmentation network and its life cycle.

Owns the backbone table (``backbones``: name -> builder -> preset family -> ImageNet import), the
heads (``heads``), save/load (``io``), the one loss (``losses``), the tf.data inputs (``inputs``),
``train``, ``evaluate``, ``predict``, connected regions (``regions``) and the offline ImageNet
``backbone_import``. The only package that imports ``keras_cv``.
"""

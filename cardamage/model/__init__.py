"""Model: the KerasCV segmentation network and its life cycle.

Modules: ``backbones`` (the backbone table: name -> builder -> preset family -> ImageNet import),
``heads`` (DeepLabV3+ / SegFormer heads, ``build_model``, and the simulation's light head),
``losses`` (the one loss and the metrics), ``io`` (save / load / ``ModelInfo``), ``inference``
(probabilities, embeddings, MC dropout, ``softmax``), ``regions`` (connected regions),
``frozen`` (frozen backbone + light head learner of the simulation), ``inputs`` (tf.data
inputs), ``train``, ``evaluate``, ``predict``, ``plots``, and the offline ImageNet import
(``backbone_import``, with the PyTorch side in ``efficientnet_lite``). Only ``backbones`` and ``heads`` import
``keras_cv``.
"""

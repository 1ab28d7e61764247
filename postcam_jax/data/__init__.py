"""The paired multi-camera dataset: generator, readers, pairs, ArrayRecord preprocessing, Grain.

Modules: ``synthetic`` (a generator writing the MultiCamVideo layout), ``multicam`` (readers),
``pairs`` (training examples), ``arrayrecord`` (TFDS builder) and ``prepare`` (its CLI), and
``pipeline`` (the Grain input pipeline the trainer calls through ``make_dataset``).
"""

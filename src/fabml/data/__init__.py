"""I/O and datasets shared by the jobs (each module imported on its own; this package imports nothing).

``splits``: one seeded, stratified, grouped split for every job, written to CSV, leaks checked on load.
``d4``: the rotation/reflection group D4 on maps (wafer augmentation, retrieval and invariance metrics).
``images``: Pillow decoding of images and masks. ``anomaly_discovery`` / ``anomaly_split`` /
``anomaly_dataset`` (re-exported together by ``anomaly_data``): the anomaly job's image folders.
``annotations`` / ``coco_annotations`` / ``mat_masks``: defect boxes (VOC, COCO, YOLO, text) and
MATLAB masks -> masks at any size. ``reference_pairs`` / ``alignment`` / ``template_pairs``: golden-template
mode's pairing (pairs CSV, name pattern, one golden), rigid alignment with residual, generated pairs.
``retrieval_discovery`` / ``retrieval_split`` / ``retrieval_dataset`` (re-exported together by
``retrieval_data``): the retrieval job's class folders or list files, ID-grouped split and images.
``pk_sampler``: P×K batches (P classes × K images) for metric learning, per DDP rank.
``wafer_io`` / ``g85`` / ``wafer_dataset``: wafer-map formats and tensors. ``simulation_io`` /
``simulation_inputs`` / ``simulation_scaler`` / ``simulation_dataset``: the surrogate job's field
files (streamed case by case), case inputs, scalers and datasets. ``synthetic_*``: generators.
"""

"""Data: pose tracks, dataset layouts, human-centric clips, the prepared-clip store, the synthetic benchmark.

poses     AlphaPose tracked JSON, COCO-17 -> OpenPose-18, STG-NF normalisation
windows   track segments (short gaps interpolated) and windows of T frames
video     frames from a video file (decord) or a JPEG folder
crops     human-centric crops and scene images
foreground the camera's background per video and each crop's foreground occupancy (S_app)
datasets  ShanghaiTech / UBnormal / own-folder layouts -> videos of a split, ground truth
prepare   `mgnet prepare`: validate, decode once, write the store (prepare_split)
cache     ClipStore, the torch Dataset over a prepared split
synthetic `mgnet synth`: the built-in benchmark (synth_body, synth_scene, synth_preview) and its
          variants for `mgnet protocol` (synth_variants)
errors    DataError, raised for every bad input with the file it concerns
"""

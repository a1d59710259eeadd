"""From one scan to a study: whole BIDS datasets into BIDS derivatives, and the region table.

* :mod:`dlqsm.study.dataset`: dataset mode of ``dlqsm reconstruct``/``dlqsm infer`` (every run,
  filters, resume, parallel jobs, a per-run summary table).
* :mod:`dlqsm.study.derivatives`: the BIDS-derivatives names and metadata.
* :mod:`dlqsm.study.labels`: segmentations: finding, naming (FreeSurfer aseg, FSL FIRST,
  dseg.tsv) and nearest-neighbour resampling to the scan grid in world coordinates.
* :mod:`dlqsm.study.table`: per-nucleus chi statistics for a cohort (CSV, participants.tsv
  joined, figure).
"""

"""Offline and through-the-stack evaluation on one fixed prequential protocol (issue 5).

- ``data``: MovieLens ``u.data`` / ``ratings.csv``, generic CSV, the synthetic drifting stream;
- ``protocol``: the ``Recommender`` protocol and ``evaluate`` (test-then-train, HR/NDCG@10/20,
  5 % windows);
- ``peers``: in-process peers (popularity, implicit ALS frozen / fold-in, co-occurrence, River MF);
- ``replay``: the running stack over HTTP as a ``Recommender`` (ingest + inference);
- ``report``: Markdown table, JSON, PNG plots; ``runner``: arms with a progress bar.
"""

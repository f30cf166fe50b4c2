"""Offline and through-the-stack evaluation on one fixed prequential protocol (issue 5).

- ``data``: MovieLens ``u.data`` / ``ratings.csv``, generic CSV, the synthetic drifting stream;
- ``protocol``: test-then-train, HR/NDCG@10/20, 5 % windows; feeds, rankers and
  ``Recommender``s (both); ``evaluate`` (one arm), ``evaluate_shared`` (rankers on one stream);
- ``peers``: in-process peers (popularity, implicit ALS frozen / fold-in, co-occurrence, River MF);
- ``replay``: the running stack over HTTP: a feed (ingest), rankers (inference), both together;
- ``stack_arms``: arms 1–6 through the real stack, one shared stream;
- ``report``: Markdown table, JSON, PNG plots; ``runner``: arms with a progress bar.
"""

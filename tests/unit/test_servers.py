from __future__ import annotations

from streamrec_dev.servers import _kafka_cluster_id


def test_kafka_cluster_ids_never_look_like_options() -> None:
    # 1 in 64 base64 ids starts with "-", which kafka-storage's parser takes for a flag.
    ids = {_kafka_cluster_id() for _ in range(5000)}
    assert len(ids) == 5000
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)

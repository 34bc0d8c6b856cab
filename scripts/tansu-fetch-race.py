#!/usr/bin/env python3
"""Reproduces tansu 0.6.0's fetch race on its memory engine (docs/BENCHMARKS.md, "Exactness
on tansu"): a consumer with a short fetch wait, beside three producers, is answered with a
batch whose predecessor is not stored yet (a gap), then with that batch again (records
twice). The data itself is intact: read again later, every offset is there once.

Why: `tansu-storage` `dynostore.rs` `produce` advances the partition's high watermark before
it stores the batch, and `fetch` lists the batches stored below the watermark; a batch put by
a second producer can be listed before the first producer's. `service/fetch.rs` then advances
its fetch offset by the records it got (not to the end of the last batch) and fetches the same
batch again. tansu's SQLite engine (`--storage-engine sqlite://...`) does both in one
transaction and shows neither.

    tansu broker --listener-url tcp://127.0.0.1:19292 \\
        --advertised-listener-url tcp://127.0.0.1:19292 --storage-engine memory://tansu/ &
    python3 scripts/tansu-fetch-race.py 127.0.0.1:19292 race 10 60

Arguments: broker, topic (created), fetch wait in ms, seconds. Needs `pip install
kafka-python`. Prints each gap and repeat, then a summary line; exits 1 when any was seen.
"""
import multiprocessing as mp
import sys
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

PRODUCERS = 3
PARTITIONS = 3


def produce(broker, topic, seconds, number):
    """~5,000 records/s to all partitions, acks=all, batches of a few records."""
    producer = KafkaProducer(bootstrap_servers=broker, acks="all", linger_ms=1)
    end = time.time() + seconds
    sent = 0
    while time.time() < end:
        producer.send(topic, value=b"x" * 200, partition=sent % PARTITIONS)
        sent += 1
        if sent % 50 == 0:
            time.sleep(0.01)
    producer.flush()
    print(f"producer {number}: {sent} sent", flush=True)


def main():
    broker, topic, wait_ms, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    KafkaAdminClient(bootstrap_servers=broker).create_topics([NewTopic(topic, PARTITIONS, 1)])
    time.sleep(1)
    consumer = KafkaConsumer(bootstrap_servers=broker, fetch_max_wait_ms=wait_ms, enable_auto_commit=False)
    partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(partitions)
    consumer.seek_to_beginning()
    producers = [mp.Process(target=produce, args=(broker, topic, seconds, n)) for n in range(PRODUCERS)]
    for producer in producers:
        producer.start()
    expected = {p: 0 for p in range(PARTITIONS)}
    gaps = repeats = records = 0
    end = time.time() + seconds + 3
    while time.time() < end:
        for partition, messages in consumer.poll(timeout_ms=100).items():
            for message in messages:
                records += 1
                next_offset = expected[partition.partition]
                if message.offset > next_offset:
                    gaps += 1
                    print(f"gap: partition {partition.partition} expected {next_offset}, got {message.offset}", flush=True)
                elif message.offset < next_offset:
                    repeats += 1
                    print(f"repeat: partition {partition.partition} expected {next_offset}, got {message.offset}", flush=True)
                expected[partition.partition] = max(next_offset, message.offset + 1)
    for producer in producers:
        producer.join()
    ends = sum(consumer.end_offsets(partitions).values())
    print(f"records read {records}, log end {ends}, gaps {gaps}, repeats {repeats}", flush=True)
    sys.exit(1 if gaps or repeats else 0)


if __name__ == "__main__":
    main()

// TEMPORARY experiment (deleted after): produce->consume latency through tansu.
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use referral_load_tests::services::TansuBroker;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

fn main() {
    let wait = std::env::args().nth(1).unwrap_or("500".into());
    let broker = TansuBroker::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let admin: AdminClient<_> = ClientConfig::new()
        .set("bootstrap.servers", broker.address())
        .create()
        .unwrap();
    rt.block_on(admin.create_topics(
        &[NewTopic::new("t", 6, TopicReplication::Fixed(1))],
        &AdminOptions::new(),
    ))
    .unwrap();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.address())
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.address())
        .set("group.id", "g")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("auto.offset.reset", "latest")
        .set("fetch.wait.max.ms", &wait)
        .create()
        .unwrap();
    consumer.subscribe(&["t"]).unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(8) {
        consumer.poll(Duration::from_millis(50));
    }
    let mut lat = Vec::new();
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < Duration::from_secs(10) {
        // 5000/s in bursts of 50 every 10 ms
        if t0.elapsed() >= Duration::from_millis(n * 10) {
            for i in 0..50 {
                let p = now_us().to_string();
                let k = format!("k{i}");
                producer
                    .send(BaseRecord::to("t").key(&k).payload(&p))
                    .unwrap();
            }
            n += 1;
        }
        producer.poll(Duration::ZERO);
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(1)) {
            let sent: u128 = std::str::from_utf8(m.payload().unwrap())
                .unwrap()
                .parse()
                .unwrap();
            lat.push(((now_us() - sent) / 1000) as u64);
        }
    }
    producer.flush(Duration::from_secs(5)).unwrap();
    lat.sort();
    let q = |f: f64| lat[((lat.len() as f64 * f) as usize).min(lat.len() - 1)];
    println!(
        "fetch.wait.max.ms={wait}: {} msgs, latency ms p50 {} p90 {} p99 {} max {}",
        lat.len(),
        q(0.5),
        q(0.9),
        q(0.99),
        lat[lat.len() - 1]
    );
}

//! A cluster-wide chat over `corro-gossip`: every line typed on one process
//! appears on every other, with membership changes as they happen.
//!
//! Three terminals:
//! ```sh
//! cargo run -p corro-gossip --example chat -- 127.0.0.1:7000
//! cargo run -p corro-gossip --example chat -- 127.0.0.1:7001 127.0.0.1:7000
//! cargo run -p corro-gossip --example chat -- 127.0.0.1:7002 127.0.0.1:7000
//! ```
//! The first argument is the address to listen on, the optional second one
//! a member to join through. End with Ctrl-D (a goodbye) or Ctrl-C.

#![allow(clippy::print_stdout, reason = "an example program")]

use corro_gossip::{GossipConfig, MemberEvent, Node};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;

#[derive(Debug, Serialize, Deserialize)]
struct Line {
    nick: String,
    text: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: chat LISTEN_ADDR [JOIN_ADDR]"))?
        .parse()?;
    let node = Node::bind(GossipConfig::plaintext(listen)).await?;
    if let Some(join) = args.next() {
        node.join(&[join.parse()?]);
    }
    let nick = format!("{}", node.local_addr());
    println!("listening on {nick} as {}", node.id());
    let mut lines = node.subscribe::<Line>("chat");
    let mut events = node.events();
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = stdin.next_line() => match line? {
                Some(text) => node.broadcast("chat", &Line { nick: nick.clone(), text })?,
                None => break,
            },
            Some((_, l)) = lines.recv() => println!("<{}> {}", l.nick, l.text),
            Ok(ev) = events.recv() => match ev {
                MemberEvent::Joined(m) => println!("* {} joined", m.addr),
                MemberEvent::Suspect(m) => println!("* {} is not answering", m.addr),
                MemberEvent::Down(m) => println!("* {} is down", m.addr),
                MemberEvent::Left(m) => println!("* {} left", m.addr),
            },
        }
    }
    node.leave().await;
    Ok(())
}

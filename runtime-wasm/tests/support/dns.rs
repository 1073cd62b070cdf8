//! A DNS server for the tests: answers the A records it is given and NXDOMAIN for
//! every other name (as a cluster DNS would for a missing Service).

use std::net::{Ipv4Addr, SocketAddr};

/// Serves `answers` (fully qualified names with the trailing dot → address) on a UDP
/// port of 127.0.0.1 from a thread that lives as long as the test process; its address.
pub fn server(answers: Vec<(&'static str, Ipv4Addr)>) -> SocketAddr {
    use hickory_proto::op::{Message, MessageType, ResponseCode};
    use hickory_proto::rr::{RData, Record, RecordType};
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut r = Message::response(q.metadata.id, q.metadata.op_code);
            r.metadata.message_type = MessageType::Response;
            let mut found = false;
            for query in q.queries.iter() {
                r.add_query(query.clone());
                let name = query.name().to_ascii();
                let hit = answers.iter().find(|(n, _)| *n == name);
                if let (Some((_, ip)), RecordType::A) = (hit, query.query_type()) {
                    found = true;
                    r.add_answer(Record::from_rdata(
                        query.name().clone(),
                        5,
                        RData::A((*ip).into()),
                    ));
                }
            }
            if !found {
                r.metadata.response_code = ResponseCode::NXDomain;
            }
            let _ = sock.send_to(&r.to_vec().unwrap(), from);
        }
    });
    addr
}

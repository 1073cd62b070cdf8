//! A wasi:http component (the serverless path): every request is answered with
//! "Hello from Kelp over wasi:http" and the request's path.
//!
//! Three paths misbehave on purpose, for Kelp's runtime tests: `/trap` panics (a
//! trap), `/hog` allocates until the memory limit ends the request, `/spin` loops
//! until the request's deadline or a stop interrupts it.

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct HttpHello;

wasi::http::proxy::export!(HttpHello);

impl Guest for HttpHello {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        match path.as_str() {
            "/trap" => panic!("asked to trap"),
            "/hog" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "/spin" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            _ => {}
        }
        let headers = Fields::new();
        let _ = headers.set("content-type", &[b"text/plain; charset=utf-8".to_vec()]);
        let response = OutgoingResponse::new(headers);
        let _ = response.set_status_code(200);
        let body = response.body().expect("the response body is taken once");
        ResponseOutparam::set(response_out, Ok(response));
        let text = format!("Hello from Kelp over wasi:http\n{path}\n");
        {
            let stream = body.write().expect("the body stream is taken once");
            stream
                .blocking_write_and_flush(text.as_bytes())
                .expect("writing the response body");
        }
        OutgoingBody::finish(body, None).expect("finishing the response body");
    }
}

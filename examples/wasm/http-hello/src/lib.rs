//! A wasi:http component (the serverless path): every request is answered with
//! "Hello from Kelp over wasi:http" and the request's path; the `x-kelp-pod` header
//! names the pod that answered (its `HOSTNAME`), so tests can tell replicas apart.
//!
//! Three paths misbehave on purpose, for Kelp's runtime tests: `/trap` panics (a
//! trap), `/hog` allocates until the memory limit ends the request, `/spin` loops
//! until the request's deadline or a stop interrupts it.
//!
//! Paths for probes (Kelp's kubelet tests): `/healthz` answers 503 while the file
//! named by the `READY_FILE` environment variable (e.g. in a mounted ConfigMap or
//! emptyDir volume) says `unready`, else 200; `/status/N` answers status N. `/env/NAME`
//! answers the value of environment variable NAME, `/file/PATH` the content of file
//! `/PATH` (what a wasi:http pod sees of its env and volumes).
//!
//! `/fetch/HOST[:PORT]/PATH` makes an outgoing wasi:http GET of
//! `http://HOST[:PORT]/PATH` and answers with its status and body (502 and the
//! error when the request fails): how one pod calls another Service by name;
//! `/fetch-tls/HOST[:PORT]/PATH` does the same over `https`.

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam,
    Scheme,
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
            "/healthz" => {
                let unready = std::env::var("READY_FILE")
                    .ok()
                    .and_then(|f| std::fs::read_to_string(f).ok())
                    .is_some_and(|s| s.trim() == "unready");
                return if unready {
                    respond(response_out, 503, "unready\n".into())
                } else {
                    respond(response_out, 200, "ok\n".into())
                };
            }
            _ => {}
        }
        if let Some(code) = path.strip_prefix("/status/") {
            let code = code.parse().unwrap_or(400);
            return respond(response_out, code, format!("status {code}\n"));
        }
        if let Some(name) = path.strip_prefix("/env/") {
            return match std::env::var(name) {
                Ok(v) => respond(response_out, 200, format!("{v}\n")),
                Err(_) => respond(response_out, 404, format!("{name} is not set\n")),
            };
        }
        for (prefix, scheme) in [("/fetch/", Scheme::Http), ("/fetch-tls/", Scheme::Https)] {
            let Some(target) = path.strip_prefix(prefix) else {
                continue;
            };
            let shown = if matches!(scheme, Scheme::Https) {
                "https"
            } else {
                "http"
            };
            let (authority, rest) = target.split_once('/').unwrap_or((target, ""));
            return match fetch(&scheme, authority, &format!("/{rest}")) {
                Ok((status, body)) => respond(response_out, status, body),
                Err(e) => respond(
                    response_out,
                    502,
                    format!("fetch {shown}://{target}: {e}\n"),
                ),
            };
        }
        if let Some(file) = path.strip_prefix("/file/") {
            let file = format!("/{file}");
            return match std::fs::read_to_string(&file) {
                Ok(v) => respond(response_out, 200, v),
                Err(e) => respond(response_out, 404, format!("{file}: {e}\n")),
            };
        }
        respond(
            response_out,
            200,
            format!("Hello from Kelp over wasi:http\n{path}\n"),
        );
    }
}

/// GET `SCHEME://AUTHORITY/PATH`: (status, body as text) or the error.
fn fetch(scheme: &Scheme, authority: &str, path: &str) -> Result<(u16, String), String> {
    let request = OutgoingRequest::new(Fields::new());
    request.set_scheme(Some(scheme)).map_err(|_| "bad scheme")?;
    request
        .set_authority(Some(authority))
        .map_err(|_| format!("bad authority {authority:?}"))?;
    request
        .set_path_with_query(Some(path))
        .map_err(|_| format!("bad path {path:?}"))?;
    let pending =
        wasi::http::outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
    pending.subscribe().block();
    let response = pending
        .get()
        .ok_or("no response")?
        .map_err(|_| "response taken twice")?
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status();
    let body = response.consume().map_err(|_| "body taken twice")?;
    let mut bytes = Vec::new();
    {
        let stream = body.stream().map_err(|_| "body stream taken twice")?;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(wasi::io::streams::StreamError::Closed) => break,
                Err(e) => return Err(format!("reading the body: {e:?}")),
            }
        }
    }
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// Answers `status` with `text` as a plain-text body.
fn respond(response_out: ResponseOutparam, status: u16, text: String) {
    {
        let headers = Fields::new();
        let _ = headers.set("content-type", &[b"text/plain; charset=utf-8".to_vec()]);
        if let Ok(pod) = std::env::var("HOSTNAME") {
            let _ = headers.set("x-kelp-pod", &[pod.into_bytes()]);
        }
        let response = OutgoingResponse::new(headers);
        let _ = response.set_status_code(status);
        let body = response.body().expect("the response body is taken once");
        ResponseOutparam::set(response_out, Ok(response));
        {
            let stream = body.write().expect("the body stream is taken once");
            stream
                .blocking_write_and_flush(text.as_bytes())
                .expect("writing the response body");
        }
        OutgoingBody::finish(body, None).expect("finishing the response body");
    }
}

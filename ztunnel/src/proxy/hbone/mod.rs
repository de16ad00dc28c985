//! HBONE: HTTP/2 CONNECT tunnels (client, server, headers).

"""Prometheus scraper against real loopback HTTP servers, including HAProxy 2.6's own exporter output.

HAPROXY_26_EXPORTER is a capture of `GET /metrics` from haproxy 2.6.12 (Debian) with a frontend
`fe`, a backend `be` with servers `s1` and `s2`, after three requests (two 404 from s1, one 503
from s2), served by `http-request use-service prometheus-exporter`. Among its lines:

    haproxy_process_nbthread 2
    haproxy_frontend_http_requests_total{proxy="fe"} 3
    haproxy_server_http_responses_total{proxy="be",server="s1",code="4xx"} 2
    haproxy_server_limit_sessions{proxy="be",server="s1"} NaN
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from prometheus_client import REGISTRY

from infra.core.service_registry import InstanceRecord, RegistryEntry
from infra.core.settings import IngestSettings
from ingest.parsers.base import now_ms
from ingest.schemas import MetricSample, decode_access_record, encode_batch
from ingest.sources.scrape import (
    PrometheusScraper,
    ScrapeError,
    registry_targets,
    samples_from_exposition,
    serve_scrape_ingest,
    target_instance,
)

HAPROXY_26_EXPORTER_GZ_B64 = (
    "H4sIAAAAAAACA9VdW3PbSK5+n1/BytapJBU7kWTHmTzkIcnMqdmaTJLKpbbOk4qSWhI3FKnlxY536/z30zdSbBJAo3WxfbZqx44INPChQTS6G5D/"
    "Fv3x+4fP0TreFvnP26n871yU5TSbVetCxIvoY72ZiSLKl1FZxUUlFpF5UEZPVmk+i9PnDenTX/4Wffufz7/jY63ieiV+QR9P5ACIMuo3QJWbvPgh"
    "P7F0Quq0TsoqL5J5nJ5FcXoT35bRmFBMj4uppR+OMaUKkcZVci3aD5JF9MV+1lMsyozmT3BVoNFgvSBKVMl6WyUbMS3FPM/klP2R30Rpnq2ieJXL"
    "eUzKvqI3cdka94nlQnXuDQ6r2yO6xDTd5nk6XcZJWheinFZ5FaedCVcPpEqKSE5rms+lCfJM6ppkc+Eg6SDA9IZEzfM6q0TxC4d2hGHYxD+nS2Xm"
    "uFhEabJJqijPpHaicQCJZCuK88baSwkqWohyXiRb6bUlpnAzLmzh5ulkJP9HqVbm8x+i4qtn6SmtmiFxzRoKr3bSPzIxN9PK1bDL80T+Y5ms5Dwt"
    "oryIks02L+Wvs9voux7pPHtKIekOhaPpUr1+/Rp979YSwHFQdXD8JTZqyL/eKXxeUKAKMDKQlII3r4tCZJVD/9581sHUfaoBD+INpjs0Pqw6RImr"
    "vSOyr/I3/d8QlW3I8YSYoSQswAwpX+Erzr9qUVaY7s3jgxTvycC07pG9IsNOme71Gnz9+iES2WKbJ5kE9WRZ5Fn1bBbPfzw9i0Zv6kwPgSOBRBNh"
    "qkc58rl+n2Ho/q7+yKR0YfneBh4ajBpF1CNEvIuFxnExFjZYOOZ2MDW5rGyTrfD4nKZYyphabtNknmQrtn8ZVtyrzHNUP/14WsvwbpEMnciMkGSR"
    "pFI/AoLoYHQ0x+kTehReFkKgCtvsTE5/nMn/X8vUKZ7JNKcFEoygI45G0CEc8VeuaSG17aaaymmdhWAudycKEOL0+bX8h3KpNC6ryCS6/IXNiOcu"
    "boYa3Shplx2Qd5xfefl7+fiL+rzZwElPVSyKFn1P4ZFhtWFaZvJnVU5Wa7m+7HSVUzBf43PQCzzSzboTKFcVOy/MFJBCB1FOvKuF/Afga/bjk7iY"
    "I9KzVHRJPc7l0PY866t81vcsRc/wLIa2ACG93XE0tQ7VqhjsUO1cMb2JgWhANuFkHT0fUgvziaNVK9WfcdDTYqewoeu7T5kOvKdMOc5D69cjGvmS"
    "VddhrFJ3EYA8OBwS7wqn1zGZsWmWH+IW8hv5seMwDQ+2UO/lPbAitCvBPPTBC8jSmcb/tgR/itv9ZrS1GHM6Q4Dj9Choh7wQKkH8LIq5SseaNEY+"
    "HcSHm3UyX0eLZBFleaU3jUkhojjKxI1ChwECpMFIAEKvr6otQqCrWpajeiqoBu2oIAvppyBHx03fmed35qUBoFFyem+pAEzTPP9Rb6ndpV0Jo7//"
    "FlliM7fCeapH61uDdbSB6UJuNgF6BthNom4jwrBW67hSr2X2WK6Gido7tVQnMoOjpd8KDjlqhHVVbWV+vNlOZ7eVJE+ywWG+fhCV9Uwuy/pCKdfw"
    "/vj27XOkOAs5jjrBPfzFRpXB0KIMbLx5XSGAhYU7u70ruDtduHh3HJ4crmWMPphTlaXcqxks77blp7qKZuJWqmqXGwesdukyiusq38SVuqtLb6Xn"
    "l+qcYEFnejuxVKq3o/KuPP9Ok9l0IzZ5cRu93SgrKSj2A0sktavtEfwAhz1NspSD0z05qdqw3rO9rh70itOl/Bh/pJaaLumH7uFX3EeK4otnubrO"
    "1JMo+dFp20E9k04qF5A2hVdKSCnkGuRH36cikDeGquLyRzmIvubThJ62eK5vcZ9FZSrENslW3vkzw9IzZ2gmFz7Fizqb/qsWtRgob/XSAz1T/03V"
    "1RoJxqf4Thit/I4OfaeSRSqm+rZ3a/NQm4/GK6G070SwqNxqVeOkktZFEJiyAAzAUBoMYEg3xi8iyyrfqvmOxlGy1Dr1XEO+ALuo0FCfRbkkLW4S"
    "mev+WxQ5uvQ2o8Oato9R9f6Zz6CbBusW+qknILXbgs6W4CzayJmRVM5naSI/y0SBxy4tD4aiH12hVQmZhqoCBwapQ8LCNUSAly30pSOFC30yYkW0"
    "lsKnZkeS7/Oy7tixZa95jp4gGUXkOwDrKbOMZJmoU3ujsKEbXIeGKu5IhXV3SEaeq1uxQBGYz9fxtXqDtnFZ6lIl0cEg31ex3Q9HXzwSK3tUKJpF"
    "IT1LkqX5CtslWJJIkejTMcTzWTk/IA/LCAFSFMasLuU/8jSVJp+KzCQCOnKqJ+f2iRsz7VWWnQUXTD+ONjUdz7vDoe81qA08USApftCii4+mMiXK"
    "09q8DP3ZsvVJv338GnXJ1DHgAdMGCMamDSDFp62X6vfBDLYrh2Dg7kT6dJPXl2iipO9pJdpjAZGJRl6v1nLHLT/NRKovK5m7aUQVdDuN0DMmq3co"
    "xgUXsoHsCUNeHpdo/OvLK7xiZX5NBTn5SO5AylImiKV8ceZCrgQai3xwLoPeTVwsVATpLZ9717a42uDFLS4dEf+SdDFNsmUevVO/RupXPDy1xFhQ"
    "agj+I6dM7b7ePJo8v3o+npyPny3EbDypLx/9L17dpLZIZndkpij6h2Ojx2px7FZBtFs/lZ7r3ZsqoD3fqGdyC7hR9/cyQApy5+YIxLduDtmIrAFt"
    "Cwgs9WBXvqswkEorFs4+Gxwa1hckHU9GF1e04rqAoq+zrliFjxOYSneGJfTtUNGq6ndk6tTkflUfReqjSN9z6k/xPcyAH9vNDAjHr16/fD26GF8O"
    "tGsvDXpX0mUn4DXxrX1kc4iG96y5E1DlkaUo5EvUB4GLcTGgdP/Rz988Wgr5Jo749PLHBnp3W8bOVXDZ3gZcx2ktQOgis8FL+pGJfW0khGMgLAhB"
    "3aVxEI95tF60zlV+GTU3cy+aOP/CTJ8MWbY2pZ1b+dGyTlP1GQqxNzoC0qVyYOrSVyaDxQpVy+5uwiwPsgq2mobNZG/U/mqG0DlAL7jU3hntHZcj"
    "tanN0X8QTs/RPULn4JxcXXLpLdKRBymedMoUfCvtJw7AiqeRGKH7lk7Gr9gcXrxtqe9CZElbIjjYruqHuxrkMNiwDBQ8SO4LzSQTwwpmVrlmsNTB"
    "dgClEIaA6P2WoLi4DjEVRZEXWExLMrl4JYc6hCvD5w8ONdMdQB6vCaT6Vb07hLL/zM2JsVq75B7vzFzAV2qPlMYzuavUy/lzPJ6bUZDlyjztoDrT"
    "Q7959Nunf3yEIaIs3z/Da7nLoK0QKsVhsnJYWYDZTH6AS7TbFTKez8XWpv5xc5ewO9TOs/T2LHqshjo3+5yG87H8raqg4yNKHU7qoCl93oZzeH0N"
    "LWVss0OgMjHKZzqFWrQdcoObjIBEkTRGn85dePn03hRD3+ruYhccd/QF5i783iTVunk9x6PR+fj1a/m0qousuYhP5Hs7+6eYV/tbClQMDVYQdfcd"
    "necL+eqMf/6EPYliNy/fAQPs5E8OlT85TP7FofIvDpN/qdkn+8u/PEz+S80+3l/+y8Pk64P4w2ZgN4TnjbZ5mQoGKjoMA5yi67S3HRzaELlIgIOp"
    "fWGO5uIGO7Lhz8Y6a5amCf7ocY1sCKSIfVtNgoVnH6hQC74D8BabqRu24xmNU3Lm5fDlFD4+b2aBF395L1Lu1ISM7TDKEmrE8P1xf4TZrbl8Jk2p"
    "iz0bymHVVagpoyfvP39/YY6ZX8zibHGTLGTio7NO/U0JT9nG7qnPtrjLF2p2mDvA9oF5obb/jShEa3ZpxBM4cFhWCLHwLUktyZQRuw21+BoMt7Mc"
    "YTEGxWPH8QCtbyGmeLzLjL8vWrVNdG3T7lCbm8p2c3oUC3ncaEDqW4NRBq9pEqWBwRqWqHQY+1c40ZNCLJJCKlS+ULu28oU9TCmf7m8+QlHUjjiP"
    "7330c3ota0/l/L4nLZJv1P141wFnqfrGFW3auL04f9FaWC7ecVTNt+fNkXynPqqoU7G/nVG1UStjHD4b+/i8Ic8O4LmXac3bHrDct225Vz4gOdOq"
    "5AUQblJbgLQW8UIU0vNvCl3ai5jW1kvpwGBYIsMiyv2NRKuAGotk8xmNxczMYxh9Um4kVbTSivW2LaB2uoKa4V809+IHJjSM3ikvBy+dwflCTLlO"
    "mCuSaoRcSiSLO7RjRzmOEXfkARYcMnnNp5evLE59tzuGKjJUgZc7sAx6Le6Ts5ZhjAmzQtPb2FRxmH6HYQWK/twpoe9jhUdys1qQplFxJigF1Rm6"
    "GXKQpw91Cy8WGYqBNW+f87Q+bW0PKoW2er+ew2/4U5bpgHJw44PKjzHlT1J1gwwO6wyX0Bitga8HbHuNj1k/gwzaDz8wmaPyBabv8YthkJExpeED"
    "wVlTCkOqfdzKFmxsWvPBKdysrWtBdD9hlQotAgNClpvQQeaktSYeITgcqmbEE/d335ZEZhV2U9BduqrcRvvgnMsnHAOK0PMibGMlbm2MO3Ph4GB5"
    "vjnEgREuWRW305u4yOTmBo/Deqa6m17JlhyEDxCLwxsS8+K1OnQqt3E1XzMh7hgkuIVc/KWfdmA33xd8AG5MIRw8wsGb32MWNPXGhDMBt2poRpQz"
    "eTngKqOG7UbILE1975dNbcRyKUyLo3lypjPKetNp1jSTXD4e0JpGvLjJijDgViQM3Dx0l2RMd9saafXBusG/f240NuUusdzPZue6f84Iw/TsDQ/r"
    "6xLx9FY/6y2qt3m8v9694WG9XSLmQrUW8x9TybXIbzLPIqVIy2ge16U6IZRYZAhQvtuEiKqIszKxvdTmwkR93pwhnO2/oAFKoovZkDbEEqpjTP4a"
    "Zyv0K+TbtjKzSOvgYDgkRLybxC8H2bVh9A4sNMNVZuh2pDhzrBtgzPcSSMXNXCo8Z+a7YQ1C+Zvn7UdkYFMEk/NmKc3jxSxO42yOJoltqlvInLrp"
    "rYvlT82mD7e9d8vJKsvVamaOArb5Vn+1a1kl8x9JJimfonvCoX6YGYakvKX7jqsjUbHePbpT60iHz4dW6EjqhU0oVSU2Q8scw7gnB3FfHMTdLxAM"
    "4+6X94Vxo5V1vWHuo3qMUsHjK9BlKf32z9NEneHFs7xgfC1+4V7UK6ZdNZMZav9VGdAEXZWHtMwsXa9BR4F74K4a0gQ/QRvQ8uA+tBo/r16kfxOV"
    "emFmuOcyPb9aXDPAp3xsO/z/KLRjas+1GVwoxzXcQ6iS82vltwW+QlLZsto1NNkYuJ0pc7kDkBu35TKZmz8kJUTWXgNbvPA3UHA2O6ACyEUJQMpD"
    "qZN003Yfy7Abd7ZUb69Xz20Sr/c6aib17m08mlzK8DlXQJZ12l030NMdQg4MCWdwgT0fjUbEXZDVjUBoKY6AkZSFbFAJliCc7WEtDrS9jzkcKS0N"
    "hkryDLBS93v6JSaAVrv9+UEoCTkwRJwhCN/91UbxNMACLqu4iX33E8usZLNFE1eZDaxyt5gxaljaoGuHfXG8S6GeVoxrIZfDMcMVwwz6K9Hx7F1/"
    "NUzHBKdD7ijCwN2lD0k8HlxZm1c9OgHBi9PY1ngwlWm0bgw7DEvMmJVL7jcD/RX/TDbqEqY5mHMPYxUgzeWtVKK+mYgmDlqdO38EiA+k+bZbc4nU"
    "ecf17eFmm4qKBAgKxCFC5MEg3UU+HGV7YWqGoeDBonB8IP0A4JUHYGeJx9Hpt8G+lM/ctOtJ87H2qGfW6C3RM/sCQt884FEDRz4kDoJ9whpPWgQW"
    "T8hiTTqe1P37XblGFYyr3Q4Z81a3Jq9166B73dWqORWzR/bv2jo7+awQK/31dlrSrupAfYeFpkbvcwfDIle6fbqQa3gOs76Rn+zF+tfbv3/8trfg"
    "375I9r25P3768I7ytc4Y5h4yfPKEuTjmT6QjyDudXeo9J9UzhH9qPQOwJtiHgzPNnjE4k336WWZOrwfLH28/vkXN4eH9+un9n79/+bIv+4fLT3/u"
    "z/vt0/dv+3O///Rxb+arA9S+Okjtqy9fP+/N/Oog0a8OEn2AxSTv+/2Zv377ui/z5y+f3h/g3Yr9EIsrfmu2XphpgtTBnSbgQG4kgUgcZfXzN4/K"
    "sYOTzTYhAJ64U2UgBUQO9al4UNMsE8aUnqbLBRNCzjjQcMGcdJLTN++nbJSBxKBz78U/DuaaQDWnlvkkfTbw2CBktMvGBa3+hFI458RywtCP2qkD"
    "j9nfRIJUKOjJHnwTqKTQsh+/1QceGEGN1hP0/PvV1R6cCvevv5LAj9sshAxNYoeKCHrg1VHIHrwKPtBxZEc4aZMOLQOxh7dFxxPzA/jJ9e8+un08"
    "shGL+Xt9fMtkwADUinFXfUOkOI9b7WkiPjvlVHfcf0RJRc1Edh95rcTknkDlkO0gD6SNyasPakN/E5PXkCFDUC53zJYo6lQWP5XcAUUP8EKYe9/6"
    "HMI6PLQL0npwXBfC3R7U8Zknhxhssr/BJgcZbHKQwSbek007xh02xLkSQbcfXJt4NmYEPbXAmnOaJqDRGUmSLZLrZFHLZ2sRp9W6afY6RhcXpQ+W"
    "pQC0IZs6Nj+9tXvQzXGEjqRVsdY4plH97Bybnq7NzisGPjZiNNm5Bro8bAhqg33Klj1aBOI43oY9r+8EjEC7jyliMX/oAPnLCd3tlTSR5uhap9R/"
    "M0H9/dyf5gA1Llb1Rhr0KWKsrkzQezoEIUbxsXlepOZPbK+LvKpSEX0zv6jwU6jC/CjebtPE9IY0VSm7Azjd0GiXqUVdKC6d5aX5jQ44KkYl+SJ6"
    "MlL849Hov556DmZbRciD2YYqKPJweGlrPdS+UVw95F0ku0Y9B39MXiqruOPmU0yq79y733rKP/vGOSmzPLT+VUotxLF8fZjdfQrcyRo60ORYA42x"
    "7ti9NZocS6OLY2l0cSyN+l28e2t0eSyNXh7LRi+PpdHwT4HsrRPauNysbffez0sogm0kyG5e3wEyk5k8qLr3rmBCEfS2juoJ9hiNy0wZ7d6aASn5"
    "8G0u3QrosRWbmzLWqXsK/WKInYanO6tnn6bk/bChJkT1vHs1dNI+RY4oeP/B61Lk2S54MIb17qb7kSUMNCC393FoQeg2Onw0hglP3VTpFwNajtVS"
    "yTNb4FAMm91foyZLAWQx5bZpepaK8GGYZQAPoPHTq5S/QgBt+/ScM4QNQR2F3nsTqUcPvw2RFlJ+lYV3AMolk0UqnD8a0pQhNne8nVILSeomytfy"
    "7YhnqQmWWo3WqmSlJioUjI4YNd9YQSMEWYs8Z97ZZ2A610zRE/vz8TbP07ZR8XFk/u5Pci2eci1JHELDtCHHrAEj0IetR+54pUely5+xlkFenhcw"
    "DGOpvbMOWp881GSe/lm+0dgDMc124p5cryTUYr6O3KHJrhCT8Udi2uwe23xpLVBjkk2+fEsyh2GY8YRtw6QEJK3wNQ371kk2O7VI1lkZL0VIZmE4"
    "BqskYhHf+KD3eJj4NtpnIPKkMtBWIZbaw05HstJxbaRSd6Z5enf7NRrK0TFh90GoA/wmZATKGJlAFP+9lBFNd+AqEvUDsgpiDnRU0BwYNf9CNWgE"
    "6mL19F920BME+0dozV7tLdr7Pwb5MbKFvAAA"
)
HAPROXY_26_EXPORTER = gzip.decompress(base64.b64decode("".join(HAPROXY_26_EXPORTER_GZ_B64)))

SIMPLE = b"""# HELP http_requests_total Requests.
# TYPE http_requests_total counter
http_requests_total{code="200",path="/a"} 7
http_requests_total{code="500",path="/a"} 1
# TYPE temperature gauge
temperature 21.5
temperature_unset NaN
"""


Route = Callable[[BaseHTTPRequestHandler], None]


class Handler(BaseHTTPRequestHandler):
    routes: dict[str, Route] = {}

    def do_GET(self) -> None:
        self.server.hits.append(self.path)  # type: ignore[attr-defined]
        route = self.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        route(self)

    def log_message(self, *args: object) -> None:
        pass


def reply(body: bytes, *, status: int = 200, gz: bool = False, delay: float = 0.0) -> Route:
    def route(h: BaseHTTPRequestHandler) -> None:
        time.sleep(delay)
        data = gzip.compress(body) if gz else body
        h.send_response(status)
        h.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        if gz:
            h.send_header("Content-Encoding", "gzip")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
    return route


@pytest.fixture
def server() -> Iterator[tuple[str, list[str]]]:
    Handler.routes = {
        "/metrics": reply(SIMPLE),
        "/gz": reply(SIMPLE, gz=True),
        "/haproxy": reply(HAPROXY_26_EXPORTER),
        "/500": reply(b"oops", status=500),
        "/garbage": reply(b"hello world\n"),
        "/latin1": reply("caf\xe9 1\n".encode("latin-1")),
        "/slow": reply(SIMPLE, delay=2.0),
    }
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.block_on_close = False
    httpd.hits = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.hits  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def refused_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/metrics"  # closed again: nothing listens


def scrape_once(url: str, **kw: object) -> list[list[MetricSample]]:
    batches: list[list[MetricSample]] = []

    async def main() -> None:
        scraper = PrometheusScraper([url], batches.append, interval_s=10, service="haproxy", **kw)  # type: ignore[arg-type]
        async with httpx.AsyncClient() as client:
            await scraper.scrape(client, url)

    asyncio.run(main())
    return batches


def by_key(samples: list[MetricSample]) -> dict[tuple[str, tuple[tuple[str, str], ...]], MetricSample]:
    return {(s.name, tuple(sorted(s.labels.items()))): s for s in samples}


def test_haproxy_exporter_capture_maps_proxy_and_server(server: tuple[str, list[str]]) -> None:
    base, _ = server
    before = now_ms()
    samples = [s for b in scrape_once(f"{base}/haproxy") for s in b]
    after = now_ms()
    host = base.removeprefix("http://")
    assert len(samples) == 317 - 16  # every sample of the capture but its 16 NaN
    got = by_key(samples)
    s1_4xx = got[("haproxy_server_http_responses_total", (("code", "4xx"), ("proxy", "be"), ("server", "s1")))]
    assert (s1_4xx.service, s1_4xx.instance, s1_4xx.value) == ("be", "s1", 2.0)
    fe = got[("haproxy_frontend_http_requests_total", (("proxy", "fe"),))]
    assert (fe.service, fe.instance, fe.value) == ("fe", host, 3.0)
    nbthread = got[("haproxy_process_nbthread", ())]
    assert (nbthread.service, nbthread.instance, nbthread.value) == ("haproxy", host, 2.0)
    assert ("haproxy_server_limit_sessions", (("proxy", "be"), ("server", "s1"))) not in got
    assert len({s.ts for s in samples}) == 1 and before <= samples[0].ts <= after  # one scrape, one time


def test_service_and_instance_labels_map_when_haproxy_labels_are_absent() -> None:
    """The pool backends' gauges carry `service`/`instance`; HAProxy's `proxy`/`server` win over them."""
    text = ('foresight_backend_resource_ratio{service="api",instance="api-1"} 0.25\n'
            'haproxy_server_current_queue{proxy="be",server="s1",service="x",instance="y"} 3\n'
            'process_open_fds 7\n')
    samples, skipped = samples_from_exposition(text, 5, service="dflt", instance="h:1")
    assert skipped == 0
    assert [(s.name, s.service, s.instance) for s in samples] == [
        ("foresight_backend_resource_ratio", "api", "api-1"), ("haproxy_server_current_queue", "be", "s1"),
        ("process_open_fds", "dflt", "h:1")]


def test_batches_respect_batch_max_and_gzip_is_undone(server: tuple[str, list[str]]) -> None:
    base, _ = server
    batches = scrape_once(f"{base}/gz", batch_max=2)
    assert [len(b) for b in batches] == [2, 1]
    got = {(s.name, s.labels.get("code")): s.value for b in batches for s in b}
    assert got == {("http_requests_total", "200"): 7.0, ("http_requests_total", "500"): 1.0,
                   ("temperature", None): 21.5}


@pytest.mark.parametrize(("path", "why"), [
    ("/500", "HTTP 500"), ("/garbage", "unparsable"), ("/latin1", "unparsable"),
    ("/nope", "HTTP 404"), ("/slow", "Timeout"), ("/haproxy", "body over 1000 bytes"),
])
def test_failed_scrapes_say_why(server: tuple[str, list[str]], path: str, why: str) -> None:
    with pytest.raises(ScrapeError, match=why):
        scrape_once(f"{server[0]}{path}", timeout_s=0.2, max_body_bytes=1000)


def test_refused_target_is_a_scrape_error() -> None:
    with pytest.raises(ScrapeError, match="ConnectError"):
        scrape_once(refused_url())


def counter(target: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("foresight_ingest_scrapes_total", {"target": target, "outcome": outcome}) or 0.0


def test_run_keeps_scraping_good_targets_while_others_fail(server: tuple[str, list[str]]) -> None:
    base, hits = server
    good, bad, refused = f"{base}/metrics", f"{base}/500", refused_url()
    batches: list[list[MetricSample]] = []
    start = {u: counter(u, o) for u in (good, bad, refused) for o in ("ok", "failed")}

    async def main() -> None:
        stop = asyncio.Event()
        scraper = PrometheusScraper([good, bad, refused], batches.append, interval_s=0.02, service="svc",
                                    timeout_s=5.0)  # a loaded CI machine may take longer than the interval
        task = asyncio.create_task(scraper.run(stop))
        deadline = asyncio.get_running_loop().time() + 10
        while hits.count("/metrics") < 3 or counter(refused, "failed") - start.get(refused, 0) < 2:
            assert asyncio.get_running_loop().time() < deadline, "timed out"
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(main())
    assert counter(good, "ok") >= 3 and counter(bad, "failed") >= 1
    assert counter(good, "failed") == 0
    assert {s.instance for b in batches for s in b} == {target_instance(good)}
    assert {s.service for b in batches for s in b} == {"svc"}


def test_serve_scrape_ingest_uses_default_targets_and_flushes(server: tuple[str, list[str]]) -> None:
    base, _ = server

    class Sink:
        def __init__(self) -> None:
            self.samples: list[MetricSample] = []
            self.flushed = 0

        def send_metrics(self, samples: list[MetricSample]) -> None:
            self.samples += samples

        def flush(self, timeout: float | None = None) -> None:
            self.flushed += 1

    sink = Sink()

    async def main() -> None:
        stop = asyncio.Event()
        settings = IngestSettings(scrape_interval_s=0.05)
        task = asyncio.create_task(serve_scrape_ingest(settings, sink, stop, default_targets=[f"{base}/haproxy"],
                                                       service="haproxy"))
        deadline = asyncio.get_running_loop().time() + 10
        while not sink.samples:
            assert asyncio.get_running_loop().time() < deadline, "timed out"
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(main())
    assert sink.flushed == 1 and {s.service for s in sink.samples} >= {"haproxy", "be", "fe"}


def test_discovered_targets_follow_the_listing_and_a_failed_listing_keeps_the_last(
        server: tuple[str, list[str]]) -> None:
    """Listed targets are scraped; a failed listing (registry down) is counted and keeps them; a target
    that left the listing stops (after at most the scrape it had in progress)."""
    base, hits = server
    listings: list[list[str] | None] = [[f"{base}/metrics"], None]  # None: the registry is down
    calls = 0

    def discover() -> list[str]:
        nonlocal calls
        calls += 1
        listing = listings[calls - 1] if calls <= len(listings) else [f"{base}/gz"]
        deadline = time.monotonic() + 10  # (a thread) the target listed first gets scraped across the failure
        while calls == 3 and hits.count("/metrics") < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        if listing is None:
            raise ConnectionError("etcd down")
        return listing

    failed = REGISTRY.get_sample_value("foresight_ingest_scrape_discoveries_total", {"outcome": "failed"}) or 0.0
    batches: list[list[MetricSample]] = []

    async def wait_for(condition: Callable[[], bool]) -> None:
        deadline = asyncio.get_running_loop().time() + 10
        while not condition():
            assert asyncio.get_running_loop().time() < deadline, "timed out"
            await asyncio.sleep(0.01)

    async def main() -> None:
        stop = asyncio.Event()
        scraper = PrometheusScraper([], batches.append, interval_s=0.02, service="svc", timeout_s=5.0,
                                    discover=discover, rediscover_every=2)
        task = asyncio.create_task(scraper.run(stop))
        await wait_for(lambda: calls >= 3 and hits.count("/gz") >= 1)
        assert hits.count("/metrics") >= 2  # scraped across the failed listing
        left_at = hits.count("/metrics")
        await wait_for(lambda: hits.count("/gz") >= 4)
        assert hits.count("/metrics") <= left_at + 1
        stop.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(main())
    assert REGISTRY.get_sample_value("foresight_ingest_scrape_discoveries_total", {"outcome": "failed"}) == failed + 1
    with pytest.raises(ValueError, match="no scrape targets"):
        PrometheusScraper([], batches.append, interval_s=1, service="svc")


def test_registry_targets_are_the_serving_instances_metrics_urls() -> None:
    def entry(instance: str, state: str, address: str = "127.0.0.1", port: int = 9000) -> RegistryEntry:
        record = InstanceRecord(address=address, port=port, state=state, started_at=0)
        return RegistryEntry("api", instance, record, None, mod_revision=1)

    entries = [entry("a", "ready", port=9001), entry("b", "draining", port=9002), entry("c", "drained", port=9003),
               entry("d", "ready", address="::1", port=9004), RegistryEntry("api", "bad", None, "not JSON", 1),
               entry("a2", "ready", port=9001)]  # the same address twice: scraped once
    assert registry_targets(entries) == ["http://127.0.0.1:9001/metrics", "http://127.0.0.1:9002/metrics",
                                         "http://[::1]:9004/metrics"]


def test_target_instance() -> None:
    assert target_instance("http://127.0.0.1:18404/metrics") == "127.0.0.1:18404"
    assert target_instance("https://exporter/metrics") == "exporter:443"
    assert target_instance("http://[::1]/metrics") == "[::1]:80"


def test_encode_metric_batch_reads_back_with_the_access_decoder() -> None:
    samples, skipped = samples_from_exposition(SIMPLE.decode(), 1000, service="s", instance="i")
    assert skipped == 1
    decoded = decode_access_record(encode_batch(samples))
    assert [MetricSample.model_validate(d) for d in decoded] == samples
    single = json.loads(encode_batch(samples[:1]))
    assert single["name"] == "http_requests_total" and single["labels"] == {"code": "200", "path": "/a"}

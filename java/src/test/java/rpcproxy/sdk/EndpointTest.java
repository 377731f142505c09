package rpcproxy.sdk;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;

import org.junit.Test;

public class EndpointTest {
    @Test
    public void serviceIdFollowsTheSpec() {
        assertEquals("127_0_0_1_5555", Endpoint.serviceId("127.0.0.1:5555"));
        assertEquals("tmpecho_sock", Endpoint.serviceId("/tmp/echo.sock"));
        assertEquals("92_168_100_200_65535", Endpoint.serviceId("192.168.100.200:65535"));
        assertEquals(20, Endpoint.serviceId("10.100.200.300:12345").length());
    }

    @Test
    public void recordHasTheSpecFieldsInOrder() {
        Endpoint e = new Endpoint("echo", "127.0.0.1:5555", "/srv/e\"cho", "git@host:team/echo.git@1a2b3c4",
                "web-3", "2026-11-24 20:21:43");
        assertEquals("{\"service\":\"echo\",\"service_id\":\"127_0_0_1_5555\",\"frontend\":\"127.0.0.1:5555\","
                + "\"deploy_path\":\"/srv/e\\\"cho\",\"code_url_version\":\"git@host:team/echo.git@1a2b3c4\","
                + "\"hostname\":\"web-3\",\"start_time\":\"2026-11-24 20:21:43\"}", e.toJson());
        assertEquals("/zk/product/test/services/echo/127_0_0_1_5555", e.path("test"));

        Endpoint now = Endpoint.of("echo", "127.0.0.1:1", null);
        assertTrue(now.startTime, now.startTime.matches("\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d"));
        assertEquals("", now.codeUrlVersion);
        assertTrue(now.deployPath.startsWith("/"));
    }
}
